"""``marl train|eval|report``: pick the subcommand, hand the rest to Hydra or a small parser.

Bad input (unknown group option or key, a factory that does not import, a bad env/algo
pair, a missing or corrupt checkpoint) is reported as one line with exit code 2.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omegaconf import DictConfig

USAGE = """usage: marl <command> [args]

commands:
  train [key=value ...] [-m]   train (Hydra app; `marl train --help` lists groups and options)
  eval PATH [episodes=100] [seed=0] [deterministic=true] [device=cpu]
                               evaluate checkpoints decentralized; PATH = seed dir, run dir or .pt
  report PATH... [out=DIR] [--format marl-eval]
                               tables and learning curves over seeds
"""

HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                          "--config-dir", "-cd", "--info", "--experimental-rerun"}


def fail(command: str, message: str) -> int:
    """One line on stderr, exit code 2."""
    print(f"marl {command}: error: {message}", file=sys.stderr)
    return 2


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
        try:
            from marlcli.report import report_main
        except ImportError:
            return fail("report", "not available in this version")
        return report_main(rest)
    return fail(cmd, f"unknown command '{cmd}'; use train, eval or report")


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


def _combinations(overrides: list[str]) -> list[list[str]]:
    """Override lists that together try every sweep value once (for up-front validation)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    base: list[str] = []
    sweeps: list[tuple[int, list[str]]] = []
    for o in parsed:
        key = o.input_line.split("=", 1)[0]
        if o.is_sweep_override():
            values = [f"{key}={v}" for v in o.sweep_string_iterator()]
            sweeps.append((len(base), values))
            base.append(values[0])
        else:
            base.append(o.input_line)
    combos = [base]
    for pos, values in sweeps:
        for v in values[1:]:
            combos.append(base[:pos] + [v] + base[pos + 1:])
    return combos


def validate_overrides(overrides: list[str]) -> str | None:
    """Compose every sweep value and check env/algo compatibility; an error line or None."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from marlcli.config import CONF_DIR
    from marlcli.errors import MarlError
    from marlcli.trainer import prepare, validate

    try:
        combos = _combinations(overrides)
    except Exception as exc:
        return f"cannot parse overrides: {str(exc).splitlines()[0]}"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        for combo in combos:
            try:
                cfg, _ = prepare(compose("config", overrides=combo))
                validate(cfg)
            except MarlError as exc:
                return str(exc)
            except Exception as exc:  # Hydra/OmegaConf composition errors
                return _hydra_message(exc)
    GlobalHydra.instance().clear()
    return None


def _hydra_message(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    if "Could not find" in text or "Could not load" in text:
        return f"{text.split('Available options')[0].strip()} (see `marl train --help` for the options)"
    if "Could not override" in text or "not in struct" in text:
        return f"{text} (see `marl train --help` for the keys)"
    return text


def train_main(args: list[str]) -> int:
    import hydra

    from marlcli import config, sweep

    config.register()
    flags, overrides = _split(args)
    # factory kwargs are free-form (any ParallelEnv's arguments): set them, never reject them as unknown keys
    overrides = [f"++{o}" if o.startswith(("env.kwargs=", "env.kwargs.")) else o for o in overrides]
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
        overrides.append(f"run={auto or time.strftime('%Y-%m-%d_%H-%M-%S')}")  # one name shared by a sweep
    if not info:
        err = validate_overrides(overrides)
        if err:
            return fail("train", err)
    plan = sweep.plan(overrides) if multirun else None
    if plan is not None:
        at_once = f"{plan.n_jobs} at a time" if plan.n_jobs else plan.launcher
        print(f"marl train: sweep of {plan.expected} jobs ({at_once}); status in {plan.sweep_dir}", file=sys.stderr)

    _task = hydra.main(version_base=None, config_path=str(config.CONF_DIR), config_name="config")(hydra_task)
    saved = sys.argv
    sys.argv = ["marl train", *flags, *overrides]
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
    """Groups with their options (from conf/) and every key of the composed config with its value."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from marlcli.config import CONF_DIR

    groups = []
    for group in ("env", "algo", "critic", "sharing"):
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        groups.append(f"  {group:8s} {', '.join(options)}")
    launchers = sorted(p.stem for p in (CONF_DIR / "hydra" / "launcher").glob("*.yaml"))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        try:
            cfg = compose("config", overrides=overrides)
        except Exception as exc:
            return f"marl train: cannot compose {overrides}: {_hydra_message(exc)}"
    GlobalHydra.instance().clear()
    body = OmegaConf.to_yaml(cfg, resolve=False)
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
        "Options (the composed config for the groups above; override any key with key=value;",
        "`marl train algo=qmix --help` shows that algorithm's keys):",
        "",
        body,
    ])


def hydra_task(cfg: DictConfig) -> Any:
    """The Hydra task: one single run (MarlError -> one line, exit 2) or one sweep job.

    Module level, so launchers pickle it by reference (submitit ships it to Slurm nodes).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from marlcli.errors import MarlError
    from marlcli.trainer import train

    if HydraConfig.get().mode == RunMode.MULTIRUN:
        from marlcli.sweep import run_job

        return run_job(cfg)  # never raises; the parent prints the summary
    try:
        out = train(cfg)
    except MarlError as exc:
        sys.exit(fail("train", str(exc)))
    print(f"results: {out}")
    return None


# ----------------------------------------------------------------------------- eval
def _parse_kv(args: list[str], known: dict[str, Any], command: str) -> tuple[list[str], dict[str, Any]]:
    paths, opts = [], dict(known)
    for a in args:
        if "=" in a and not Path(a).exists():
            k, v = a.split("=", 1)
            if k not in known:
                raise ValueError(f"unknown option '{k}'; options: {', '.join(known)}")
            default = known[k]
            if isinstance(default, bool):
                if v.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"{k} must be true or false, got '{v}'")
                opts[k] = v.lower() in ("true", "1")
            elif isinstance(default, int):
                try:
                    opts[k] = int(v)
                except ValueError:
                    raise ValueError(f"{k} must be an integer, got '{v}'") from None
            else:
                opts[k] = v
        else:
            paths.append(a)
    return paths, opts


def eval_main(args: list[str]) -> int:
    from marlcli.errors import MarlError

    try:
        paths, opts = _parse_kv(args, {"episodes": 1000, "seed": 0, "deterministic": True, "device": "cpu",
                                       "envs": 1000}, "eval")
    except ValueError as exc:
        return fail("eval", str(exc))
    if len(paths) != 1:
        return fail("eval", "give exactly one PATH (a seed dir, a run dir or a .pt file)")
    try:
        rows = evaluate_path(Path(paths[0]), **opts)
    except MarlError as exc:
        return fail("eval", str(exc))
    print_eval_table(rows)
    return 0


def evaluate_path(path: Path, episodes: int = 1000, seed: int = 0, deterministic: bool = True,
                  device: str = "cpu", envs: int = 1000) -> list[dict[str, Any]]:
    """Evaluate every checkpoint at ``path`` decentralized; writes ``eval.json`` per seed dir."""
    from marlcli import results
    from marlcli.algos import load_family
    from marlcli.errors import CheckpointError
    from marlcli.evaluate import run_episodes
    from marlcli.trainer import env_for_eval, resolve_device

    if not path.exists():
        raise CheckpointError(f"{path} does not exist; give a seed dir, a run dir or a .pt file")
    targets = [path] if path.is_file() else results.find_seed_dirs(path)
    if not targets:
        raise CheckpointError(f"no checkpoints under {path} (expected seed_*/checkpoints/latest.pt)")
    dev = resolve_device(device)
    rows = []
    for target in targets:
        payload = results.load_checkpoint(target)
        cfg = results.checkpoint_config(payload)
        env = env_for_eval(cfg, min(episodes, envs), seed, dev)
        actor = load_family(cfg.algo).make_actor(env.spec, cfg).to(dev)
        actor.load_state_dict(payload["actor"])  # the actor only: no critic is loaded
        actor.eval()
        res = run_episodes(actor, env, episodes, deterministic)
        env.close()
        summary = {k.removeprefix("eval/"): v for k, v in res.summary().items()}
        row = {"env": str(cfg.env.name), "algo": str(cfg.algo.name), "run": str(cfg.run), "seed": int(cfg.seed),
               "step": int(payload["step"]), "checkpoint": str(target), "deterministic": deterministic,
               "eval_seed": seed, **summary}
        sdir = target if target.is_dir() else (target.parent.parent if target.parent.name == "checkpoints"
                                                else target.parent)
        if (sdir / "config.yaml").exists():
            results.atomic_write_text(sdir / "eval.json", json.dumps(row, indent=2) + "\n")
        rows.append(row)
    return rows


def print_eval_table(rows: list[dict[str, Any]]) -> None:
    import math

    from rich.console import Console
    from rich.table import Table

    agents = [k for k in rows[0] if k.startswith("return/")]
    roles = [k for k in rows[0] if k.startswith("return_role/")]
    extra = [k for k in rows[0] if k in ("landmarks_covered", "collisions", "catches")]
    table = Table(title=f"marl eval: {rows[0]['algo']} on {rows[0]['env']} (decentralized actors)")
    for col in ["seed", "step", "episodes", "return mean ± 95% CI", *[a.split("/", 1)[1] for a in agents + roles],
                *extra]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["seed"]), f"{r['step']:,}", f"{r['episodes']:.0f}",
                      f"{r['return_mean']:.3f} ± {r['return_ci95']:.3f}",
                      *[f"{r[k]:.3f}" for k in agents + roles + extra])
    if len(rows) > 1:
        means = [r["return_mean"] for r in rows]
        m = sum(means) / len(means)
        sd = math.sqrt(sum((x - m) ** 2 for x in means) / (len(means) - 1))
        table.add_row("all", "", f"{sum(r['episodes'] for r in rows):.0f}",
                      f"{m:.3f} ± {1.96 * sd / math.sqrt(len(means)):.3f}",
                      *[f"{sum(r[k] for r in rows) / len(rows):.3f}" for k in agents + roles + extra])
    console = Console()
    if not console.is_terminal:  # piped or logged: do not squeeze the columns into 80 characters
        console = Console(width=200)
    console.print(table)


def entry() -> None:
    try:
        sys.exit(main())
    except BrokenPipeError:  # `marl ... | head`
        sys.stderr.close()
        sys.exit(0)


if __name__ == "__main__":
    entry()
