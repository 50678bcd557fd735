"""`python -m marlcli.bench`: every section, rendered to markdown and JSON."""

from marlcli.bench.main import main

if __name__ == "__main__":
    raise SystemExit(main())
