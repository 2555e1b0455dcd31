"""The top floor: the application's assembly (`moko serve`) and the `moko` command line.

Only this package may import from every floor (bot/, policies/, handlers/); nothing below
imports it.
"""
