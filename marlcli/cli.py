"""``marl train|eval|report``: pick the subcommand, hand the rest to Hydra or a small parser.

Bad input (unknown group option or key, a factory that does not import, a bad env/algo
pair, a missing or corrupt checkpoint) is reported as one line with exit code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from marlcli import cliutil, config, reference, selfplay, stats, sweep
from marlcli.cliutil import default_run_name, fail, os_error, parse_kv
from marlcli.distributed.collectives import quick_exit
from marlcli.distributed.launch import train_or_launch
from marlcli.errors import ConfigError, MarlError
from marlcli.evaluate import evaluate_path
from marlcli.export import evaluate_export, export_main, is_export
from marlcli.overrides import compose_checked
from marlcli.report import report_main
from marlcli.selfplay.crossplay import evaluate_vs
from marlcli.trainer import prepare, validate

USAGE = """usage: marl <command> [args]

commands:
  train [key=value ...] [-m]   train (Hydra app; `marl train --help` lists groups and options)
  eval PATH [episodes=1000] [seed=0] [deterministic=true] [device=cpu] [envs=1000] [env.KEY=VALUE ...] [vs=OTHER]
                               evaluate checkpoints decentralized; PATH = seed dir, run dir or .pt
                               (env.N=32 ...: in another env configuration; env.factory=: trust a
                               factory the checkpoint names that is not marlcli's; comm=off or
                               comm.dropout=0.2: with the message channel cut or degraded)
  report PATH... [out=DIR] [--format marl-eval]
                               tables and learning curves over seeds
  export PATH [format=onnx,torchscript] [out=DIR]
                               the actor as ONNX/TorchScript files with manifest.json (see README)
"""

HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                          "--config-dir", "-cd", "--info", "--experimental-rerun"}


# `marl eval` options that are config keys, applied to the checkpoint's config: any env.<key>
# (`env.N=32 env.num_agent_neighbors=3`: evaluate where the actor was not trained; issue 17)
# and any comm.<key> (`comm.dropout=0.2`: degrade the message channel; `comm=off` = comm.cut=true; issue 19)
EVAL_CONFIG_KEYS = ("env.", "comm.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        return train_main(rest)
    if cmd == "eval":
        return eval_main(rest)
    if cmd == "report":
        return report_main(rest)
    if cmd == "export":
        return export_main(rest)
    return fail(cmd, f"unknown command '{cmd}'; use train, eval, report or export")


# ----------------------------------------------------------------------------- train
def _split(args: list[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra flags from ``key=value`` overrides."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("-"):
            flags.append(a)
            if a in HYDRA_FLAGS_WITH_VALUE and i + 1 < len(args):
                flags.append(args[i + 1])
                i += 1
        else:
            overrides.append(a)
        i += 1
    return flags, overrides


def validate_overrides(overrides: list[str], exclude: list[str] | None = None) -> str | None:
    """Compose every combination of sweep values and check each env/algo pair; an error line or None.

    The full product up to ``cliutil.FULL_PRODUCT_LIMIT`` jobs (else every combination of the
    env/algo keys), so no job can fail on a bad pair after others ran (issue 16). ``exclude``
    (a multirun's hidden keys) gives each combination its configuration dir, as its job will have.
    """
    try:
        combos = cliutil.combinations(overrides)
    except Exception as exc:
        return f"cannot parse overrides: {str(exc).splitlines()[0]}"
    for combo in combos:
        try:
            cfg = compose_checked(combo)  # typos, unknown choices and wrong types, in words (issue 25)
            if exclude is not None and not cfg.get("variant"):
                cfg.variant = cliutil.variant_name(combo, exclude)
            cfg, _ = prepare(cfg, given=combo)  # resume=<dir>: a given key must match the saved run
            validate(cfg)
        except MarlError as exc:
            return str(exc)
        except Exception as exc:  # an env factory refusing its arguments (a user's PettingZoo env raising ValueError)
            return _hydra_message(exc)
    return None


def _hydra_message(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    if "Could not find" in text or "Could not load" in text:
        return f"{text.split('Available options')[0].strip()} (see `marl train --help` for the options)"
    if "Could not override" in text or "not in struct" in text:
        return f"{text} (see `marl train --help` for the keys)"
    return text


def train_main(args: list[str]) -> int:
    config.register()
    flags, overrides = _split(args)
    # factory kwargs are free-form (any ParallelEnv's arguments): set them, never reject them as unknown keys
    overrides = [f"++{o}" if o.startswith(("env.kwargs=", "env.kwargs.")) else o for o in overrides]
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    if any(o.startswith("resume=") and o != "resume=auto" for o in overrides) and "train.total_steps" not in keys:
        # resume=<dir> keeps the saved budget; only an explicit train.total_steps extends it (prepare() takes
        # the larger of the two, so 1 means "none given"; without this the algo's default budget would win)
        overrides.append("train.total_steps=1")
    if "--help" in flags or "-h" in flags:
        print(train_help(overrides))
        return 0
    info = any(f in ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info") for f in flags)
    multirun = not info and any(f in ("-m", "--multirun") for f in flags)
    if not any(o.split("=", 1)[0].lstrip("+~") == "run" for o in overrides):
        # resume=auto continues the newest run of this env/algo (an interrupted sweep), see issue 6
        auto = "resume=auto" in overrides and sweep.latest_run(overrides)
        if auto:
            print(f"marl train: resume=auto: continuing run '{auto}'", file=sys.stderr)
        overrides.append(f"run={auto or default_run_name()}")  # unique, and one name shared by a sweep
    exclude = cliutil.hidden_keys(overrides) if multirun else None  # what does not name a configuration dir
    if not info:
        err = validate_overrides(overrides, exclude)
        if err:
            return fail("train", err)
    extra: list[str] = []  # overrides for Hydra only (not validated as config keys)
    try:
        plan = sweep.plan(overrides, exclude) if multirun else None
    except ConfigError as exc:
        return fail("train", str(exc))
    if plan is not None:
        at_once = f"{plan.n_jobs} at a time" if plan.n_jobs else plan.launcher
        print(f"marl train: sweep of {plan.expected} jobs ({at_once}); status in {plan.sweep_dir}", file=sys.stderr)
        quoted = ",".join(f"'{k}'" for k in exclude or [])
        extra.append(f"hydra.job.config.override_dirname.exclude_keys=[{quoted}]")  # read by sweep.run_job

    _task = hydra.main(version_base=None, config_path=str(config.CONF_DIR), config_name="config")(hydra_task)
    saved = sys.argv
    sys.argv = ["marl train", *flags, *overrides, *extra]
    launcher_error = None
    try:
        _task()
    except SystemExit as exc:
        if plan is None:
            return int(exc.code or 0) if isinstance(exc.code, int) else 1
        launcher_error = f"exit {exc.code}"
    except Exception as exc:  # a launcher that died (e.g. a joblib worker killed): summarize what ran
        if plan is None:
            raise
        launcher_error = " ".join(str(exc).split())[:200] or type(exc).__name__
    finally:
        sys.argv = saved
    return sweep.summarize(plan, launcher_error) if plan is not None else 0


def train_help(overrides: list[str]) -> str:
    """Groups with their options (from conf/), examples, and every key with its type, default and meaning.

    The keys and their meanings come from the schemas' field comments, the source of
    docs/configuration.md too (``marlcli/reference.py``); the defaults are the ones composed for
    the groups given, so ``marl train algo=qmix --help`` shows QMIX's.
    """
    groups = [f"  {group:8s} {', '.join(reference.options(group))}" for group in reference.GROUPS]
    launchers = reference.options("hydra/launcher")
    try:
        cfg = config.compose(overrides)
    except Exception as exc:  # a bad group option or key: one line instead of the keys
        return f"marl train: cannot compose {overrides}: {_hydra_message(exc)}"
    return "\n".join([
        "usage: marl train [group=option ...] [key=value ...] [-m]",
        "",
        "Train one run (or, with -m and comma-separated values, a sweep of runs in parallel).",
        "",
        "Config groups (group=option):",
        *groups,
        f"  {'hydra/launcher':8s} {', '.join(launchers)}  (multirun only)",
        "",
        "Examples:",
        "  marl train algo=qmix env=spread",
        "  marl train algo=mappo env=tag sharing=role critic=independent train.total_steps=1000000",
        "  marl train -m seed=0,1,2,3,4 algo=qmix,mappo",
        "  marl train resume=results/spread/mappo/<run>/seed_0",
        "",
        "Keys (key, type, default, meaning; set any with key=value). The defaults are composed for the groups",
        "given: `marl train algo=qmix --help` shows QMIX's. The same keys as tables: docs/configuration.md.",
        "",
        reference.help_text(cfg, overrides),
    ])


def hydra_task(cfg: DictConfig) -> Any:
    """The Hydra task: one single run (MarlError -> one line, exit 2) or one sweep job.

    Module level, so launchers pickle it by reference (submitit ships it to Slurm nodes).
    """
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        return sweep.run_job(cfg)  # never raises; the parent prints the summary
    try:
        out = train_or_launch(cfg, given=list(HydraConfig.get().overrides.task))
    except MarlError as exc:
        if getattr(exc, "exit_code", None) is not None:  # stopped by a signal (trainer.Stopped): 130 / 143 / 138
            print(f"marl train: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        sys.exit(fail("train", str(exc)))
    except OSError as exc:  # the results dir cannot be written (read-only, full disk, a file in its way): one line
        sys.exit(fail("train", os_error(cfg.results_dir, exc)))
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank runs this; rank 0 speaks
        print(f"results: {out}")
    return None


# ----------------------------------------------------------------------------- eval
def eval_main(args: list[str]) -> int:
    args = ["comm.cut=true" if a == "comm=off" else a for a in args]  # the channel-cut ablation
    other = next((a for a in args if a.startswith("comm=")), None)
    if other:  # the run's channel type is fixed by its weights: only the cut (and comm.KEY=VALUE) can be asked for
        return fail("eval", f"{other}: comm=off (the channel cut) is the one comm= value; degrade the channel with "
                            "comm.KEY=VALUE (comm.dropout=0.2)")
    try:
        parsed = parse_kv(args, {"episodes": 1000, "seed": 0, "deterministic": True, "device": "cpu", "envs": 1000,
                                 "vs": ""}, passthrough=EVAL_CONFIG_KEYS, positive=("episodes", "envs"))
    except ValueError as exc:
        return fail("eval", str(exc))
    if len(parsed.paths) != 1:
        flags = [p for p in parsed.paths if p.startswith("-")]
        if flags:
            return fail("eval", f"unknown flag '{flags[0]}': options are key=value (episodes=100 seed=1 ...)")
        return fail("eval", "give exactly one PATH (a seed dir, a run dir, a .pt file or an export dir)")
    try:
        target = Path(parsed.paths[0])
        vs = parsed.opts.pop("vs")
        if vs:  # cross-play: each side through its own run's actor (marlcli/selfplay/crossplay.py)
            if parsed.overrides:  # evaluate_vs plays both runs where they were trained: never ignore an option
                return fail("eval", f"vs= (cross-play) takes no env./comm. options ({parsed.overrides[0]}): both runs "
                                    "play in the env they were trained in")
            rows = evaluate_vs(target, Path(vs), **parsed.opts)
        elif is_export(target):
            rows = evaluate_export(target, **parsed.opts, overrides=parsed.overrides)
        else:  # self-play runs play the opponents their training would (their pool)
            rows = evaluate_path(target, **parsed.opts, overrides=parsed.overrides, opponents=selfplay.opponents_for_eval)
    except MarlError as exc:
        return fail("eval", str(exc))
    print_eval_table(rows)
    return 0


def print_eval_table(rows: list[dict[str, Any]]) -> None:
    """The rows of ``marl eval`` as a table; several seeds add an ``all`` row (their mean, its 95% interval)."""
    agents = [k for k in rows[0] if k.startswith("return/")]
    if len(agents) > 8:  # a swarm: eval.json keeps every agent, the table only the means
        agents = []
    roles = [k for k in rows[0] if k.startswith("return_role/")]
    extra = [k for k in rows[0] if k in ("landmarks_covered", "collisions", "catches", "selfplay_score", "win_rate")
             or k.startswith("win_rate/")]  # win rates: the game's outcome rule (tag: a catch)
    side = ["side"] if "side" in rows[0] else []  # cross-play: what PATH played
    where = " ".join(f"{k}={v}" for k, v in {**rows[0].get("env_overrides", {}),
                                              **rows[0].get("comm_overrides", {})}.items())
    if "return_mean_intact" in rows[0]:  # a channel ablation: the intact channel's return beside it
        extra = ["return_mean_intact", *extra]
    table = Table(title=f"marl eval: {rows[0]['algo']} on {rows[0]['env']}{' ' + where if where else ''} "
                        "(decentralized actors)")
    for col in ["seed", *["PATH plays"] * len(side), "step", "episodes", "return mean ± 95% CI",
                *[a.split("/", 1)[1] for a in agents + roles], *extra]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["seed"]), *[str(r[k]) for k in side], f"{r['step']:,}", f"{r['episodes']:.0f}",
                      f"{r['return_mean']:.3f} ± {r['return_ci95']:.3f}",
                      *[f"{r[k]:.3f}" for k in agents + roles + extra])
    if len(rows) > 1 and not side:
        means = [r["return_mean"] for r in rows]
        table.add_row("all", "", f"{sum(r['episodes'] for r in rows):.0f}",
                      f"{stats.mean(means):.3f} ± {stats.ci95(means):.3f}",
                      *[f"{sum(r[k] for r in rows) / len(rows):.3f}" for k in agents + roles + extra])
    console = Console()
    if not console.is_terminal:  # piped or logged: do not squeeze the columns into 80 characters
        console = Console(width=200)
    console.print(table)


def entry() -> None:
    """The ``marl`` console script: ``main()``'s exit code; Ctrl-C is one line and 130 (128 + SIGINT), never a traceback.

    ``marl train`` stops itself on SIGINT (a checkpoint and a resume hint, trainer.py); a Ctrl-C that
    reaches here (during ``marl eval``, ``report`` or ``export``, or before training started) has
    nothing to save, so it only says so.
    """
    try:
        code = main()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:  # a rank of torchrun / Slurm
            quick_exit(code)  # no exit-time destructors: gloo's threads could std::terminate there
        sys.exit(code)
    except BrokenPipeError:  # `marl ... | head`
        sys.stderr.close()
        sys.exit(0)
    except KeyboardInterrupt:
        cmd = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] in ("train", "eval", "report", "export") else ""
        print(f"marl {cmd}: interrupted" if cmd else "marl: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    entry()
