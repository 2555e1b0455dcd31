// A minimal Probot app that stores nothing: the reference bench/intake.py --reference measures
// under the same load as Moko. Settings come from the environment the bench sets.
const { Server, Probot } = require("probot");

const app = (probot) => {
  probot.on("ping", async () => {});
};

async function main() {
  const server = new Server({
    Probot: Probot.defaults({
      appId: process.env.APP_ID,
      privateKey: process.env.PRIVATE_KEY,
      secret: process.env.WEBHOOK_SECRET,
      logLevel: process.env.LOG_LEVEL || "warn",
    }),
    host: "127.0.0.1",
    port: parseInt(process.env.PORT, 10),
    webhookPath: "/api/github/webhooks",
  });
  await server.load(app);
  await server.start();
}

main();
