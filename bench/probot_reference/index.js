// A minimal Probot app: the reference the benchmarks measure Moko against on one machine.
// bench/intake.py sends it pings (it stores nothing); bench/processing.py sends it
// repository.created deliveries, which it handles as Moko does under a settings-only policy:
// compare the payload's settings with the policy, PATCH the repository when they differ.
// Settings come from the environment the benches set.
const { Server, Probot, ProbotOctokit } = require("probot");

// The organization's policy of bench/processing.py (Moko reads the same from .github/moko.yml).
const POLICY = { has_issues: true, has_wiki: false, has_projects: false };

const app = (probot) => {
  probot.on("ping", async () => {});
  probot.on("repository.created", async (context) => {
    const repository = context.payload.repository;
    const drift = {};
    for (const [field, wanted] of Object.entries(POLICY)) {
      if (repository[field] !== wanted) drift[field] = wanted;
    }
    if (Object.keys(drift).length === 0) return;
    await context.octokit.repos.update({ owner: repository.owner.login, repo: repository.name, ...drift });
  });
};

async function main() {
  const defaults = {
    appId: process.env.APP_ID,
    privateKey: process.env.PRIVATE_KEY,
    secret: process.env.WEBHOOK_SECRET,
    logLevel: process.env.LOG_LEVEL || "warn",
    // Octokit's throttling spaces writes a second apart; the reference is measured without it.
    Octokit: ProbotOctokit.defaults((options) => ({ ...options, throttle: { enabled: false } })),
  };
  if (process.env.BASE_URL) defaults.baseUrl = process.env.BASE_URL;
  const server = new Server({
    Probot: Probot.defaults(defaults),
    host: "127.0.0.1",
    port: parseInt(process.env.PORT, 10),
    webhookPath: "/api/github/webhooks",
  });
  await server.load(app);
  await server.start();
}

main();
