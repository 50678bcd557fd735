"""``marl report PATH... [out=DIR] [--format marl-eval]``: results over seeds, for papers.

One row per configuration: env x algorithm x run x configuration dir (``critic=independent,
sharing=none``, whose keys become columns; issue 16). Each row has the final evaluation return
over the seeds that finished (a ``done`` file): mean, a 95% percentile-bootstrap CI of the mean
and the IQM (interquartile mean; Agarwal et al. 2021, "Deep RL at the Edge of the Statistical
Precipice"), seeds done/total, env steps and wall time. Unfinished seeds are left out of every
figure and listed. Envs whose agents have several roles (tag, adversary) are reported per role
(``eval/return_role/<role>``): their all-agent mean adds up opposing sides and means nothing.
Env statistics (``eval/catches``, ``eval/collisions``, ...) get a column each.

It prints a rich table and writes ``report.md``, ``report.csv`` and ``curves.png`` (mean eval
return vs env steps with a 95% CI band per configuration, and per role, one panel per env)
into the first PATH or ``out=DIR``; ``--format marl-eval`` also writes ``marl_eval.json`` for
InstaDeep's marl-eval tool.

A seed's final return is the last ``eval/return_mean`` line of its ``metrics.jsonl``: the
training-time evaluation, the same protocol for every seed and the same data as the curves.
``eval.json`` (from ``marl eval``, whose episodes and seed the user picks) is used only for
a seed whose metrics hold no evaluation.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from marlcli.cliutil import fail, os_error, parse_kv, suggest
from marlcli.errors import MarlError
from marlcli.report.plots import curve, plot_curves
from marlcli.results import DONE_FILE, describe, read_metrics
from marlcli.selfplay.payoff import write_all
from marlcli.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_ci, iqm, mean

__all__ = ["ReportError", "SeedResult", "curve", "find_seed_dirs", "group", "load_seed", "marl_eval_data",
           "plot_curves", "print_table", "report_main", "summary_rows", "write_csv", "write_markdown"]
SKIP_DIRS = {".sweeps"}
NOT_STATS = {"return_mean", "return_std", "return_ci95", "episodes"}  # eval/<key>s that are not env statistics


# ----------------------------------------------------------------------------- loading
@dataclass
class SeedResult:
    env: str
    algo: str
    run: str
    seed: int
    path: Path
    variant: str = ""  # configuration dir ("" for a single run)
    eval_steps: list[int] = field(default_factory=list)
    eval_returns: list[float] = field(default_factory=list)
    role_returns: dict[str, list[float]] = field(default_factory=dict)  # role -> one value per eval step
    final_return: float = math.nan
    final_stats: dict[str, float] = field(default_factory=dict)  # env statistics at the last evaluation
    env_steps: int = 0
    wall_s: float = 0.0
    done: bool = False
    suite: str = ""


def find_seed_dirs(path: Path) -> list[Path]:
    """Seed dirs (holding ``metrics.jsonl``) at or below ``path``; sweep status dirs skipped."""
    if (path / "metrics.jsonl").is_file():
        return [path]
    return sorted(p.parent for p in path.rglob("metrics.jsonl") if not SKIP_DIRS & set(p.relative_to(path).parts))


class ReportError(MarlError):
    """A results file ``marl report`` cannot read (a corrupt ``config.yaml``, ``metrics.jsonl`` or ``eval.json``)."""


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """A results file that is there but cannot be read or holds the wrong types: one :class:`ReportError` line.

    Silently dropping it would change the report's figures (a seed left out of the mean)
    without saying so; the error names the file, so it can be repaired or removed.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - YAML, JSON, key and type errors from a damaged or foreign file
        raise ReportError(f"cannot read {path}: {describe(exc)}; repair or remove it") from None


def load_seed(sdir: Path) -> SeedResult:
    parts = sdir.resolve().parts  # .../<env>/<algo>/<run>/[<variant>/]seed_<k> when there is no config.yaml
    nested = "=" in parts[-2]
    env, algo, run = parts[-5 if nested else -4], parts[-4 if nested else -3], parts[-3 if nested else -2]
    variant, seed, suite = parts[-2] if nested else "", parts[-1].removeprefix("seed_"), ""
    if (sdir / "config.yaml").is_file():
        with reading(sdir / "config.yaml"):
            cfg = OmegaConf.load(sdir / "config.yaml")
            env, algo, run, seed = str(cfg.env.name), str(cfg.algo.name), str(cfg.run), str(cfg.seed)
            variant = str(cfg.get("variant") or "")
            suite = str(cfg.env.get("factory") or "").split(".", 1)[0].split(":", 1)[0]
    res = SeedResult(env, algo, run, int(seed) if seed.lstrip("-").isdigit() else 0, sdir, variant=variant,
                     suite=suite or env, done=(sdir / DONE_FILE).exists())
    try:
        lines = read_metrics(sdir / "metrics.jsonl")
    except (json.JSONDecodeError, OSError):
        lines = []
    with reading(sdir / "metrics.jsonl"):
        _add_metrics(res, lines)
    if res.eval_returns:
        res.final_return = res.eval_returns[-1]
    elif (sdir / "eval.json").is_file():
        with reading(sdir / "eval.json"):
            res.final_return = float(json.loads((sdir / "eval.json").read_text())["return_mean"])
    return res


def _add_metrics(res: SeedResult, lines: list[dict[str, Any]]) -> None:
    for ln in lines:
        res.env_steps = max(res.env_steps, int(ln.get("step", 0)))
        res.wall_s = max(res.wall_s, float(ln.get("time_s", 0.0)))
        if ln.get("eval/return_mean") is not None:
            res.eval_steps.append(int(ln["step"]))
            res.eval_returns.append(float(ln["eval/return_mean"]))
            for k, v in ln.items():
                if k.startswith("eval/return_role/") and v is not None:
                    res.role_returns.setdefault(k.removeprefix("eval/return_role/"), []).append(float(v))
            res.final_stats = {k[5:]: float(v) for k, v in ln.items() if k.startswith("eval/") and v is not None
                               and k[5:] not in NOT_STATS and not k.startswith(("eval/return/", "eval/return_role/"))}


Key = tuple[str, str, str, str]  # env, algo, run, variant


def group(seeds: list[SeedResult]) -> dict[Key, list[SeedResult]]:
    """Seeds by configuration (env, algo, run, variant), in a stable order."""
    out: dict[Key, list[SeedResult]] = defaultdict(list)
    for s in sorted(seeds, key=lambda s: (s.env, s.algo, s.run, s.variant, s.seed)):
        out[(s.env, s.algo, s.run, s.variant)].append(s)
    return dict(out)


def variant_columns(variant: str) -> dict[str, str]:
    """``critic=independent,sharing=none`` -> ``{"critic": "independent", "sharing": "none"}``."""
    pairs = [p.split("=", 1) for p in variant.split(",") if "=" in p]
    return {k: v for k, v in pairs} if variant and pairs else ({"variant": variant} if variant else {})


def _stats(values: list[float]) -> dict[str, float]:
    lo, hi = bootstrap_ci(values)
    return {"mean": mean(values), "ci95_low": lo, "ci95_high": hi, "iqm": iqm(values)}


def summary_rows(groups: dict[Key, list[SeedResult]]) -> list[dict[str, Any]]:
    """One row per configuration; only finished seeds (a ``done`` file) enter the figures."""
    rows = []
    for (env, algo, run, variant), seeds in groups.items():
        done = [s for s in seeds if s.done]
        finals = [s.final_return for s in done if not math.isnan(s.final_return)]
        st = _stats(finals)
        row: dict[str, Any] = {
            "env": env, "algo": algo, "run": run, "variant": variant, "config": variant_columns(variant),
            "seeds": len(finals), "seeds_done": len(done), "seeds_total": len(seeds),
            "env_steps": int(np.mean([s.env_steps for s in done])) if done else 0,
            "wall_time_s": round(float(np.mean([s.wall_s for s in done])), 1) if done else 0.0,
            "return_mean": st["mean"], "ci95_low": st["ci95_low"], "ci95_high": st["ci95_high"], "iqm": st["iqm"],
            "final_returns": finals, "roles": {}, "stats": {},
            "unfinished": [str(s.path) for s in seeds if not s.done],
        }
        for role in dict.fromkeys(r for s in done for r in s.role_returns):
            row["roles"][role] = _stats([s.role_returns[role][-1] for s in done if s.role_returns.get(role)])
        for stat in dict.fromkeys(k for s in done for k in s.final_stats):
            row["stats"][stat] = mean([s.final_stats[stat] for s in done if stat in s.final_stats])
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- outputs
def _fmt_time(s: float) -> str:
    h, rem = divmod(int(round(s)), 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def _ci(st: dict[str, float]) -> str:
    return f"{st['mean']:.3f} [{st['ci95_low']:.3f}, {st['ci95_high']:.3f}]"


def _display(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Columns: identity, the varied keys, seeds, budget, the return (per role where agents have roles), stats."""
    keys = list(dict.fromkeys(k for r in rows for k in r["config"]))
    roles = list(dict.fromkeys(k for r in rows for k in r["roles"]))
    stats = list(dict.fromkeys(k for r in rows for k in r["stats"]))
    cols = ["env", "algo", "run", *keys, "seeds done/total", "env steps", "wall time", "final return (mean)",
            "95% CI", "IQM", *[f"return {r} (mean [95% CI])" for r in roles], *stats]
    body = []
    for r in rows:
        overall = [f"{r['return_mean']:.3f}", f"[{r['ci95_low']:.3f}, {r['ci95_high']:.3f}]", f"{r['iqm']:.3f}"]
        if r["roles"]:  # opposing sides: their all-agent mean means nothing, see the role columns
            overall = ["-", "-", "-"]
        body.append([r["env"], r["algo"], r["run"], *[r["config"].get(k, "") for k in keys],
                     f"{r['seeds_done']}/{r['seeds_total']}", f"{r['env_steps']:,}", _fmt_time(r["wall_time_s"]),
                     *overall, *[_ci(r["roles"][k]) if k in r["roles"] else "" for k in roles],
                     *[f"{r['stats'][k]:.3f}" if k in r["stats"] else "" for k in stats]])
    return cols, body


def unfinished(rows: list[dict[str, Any]]) -> list[str]:
    return [p for r in rows for p in r["unfinished"]]


def print_table(rows: list[dict[str, Any]]) -> None:
    cols, body = _display(rows)
    table = Table(title="marl report: final evaluation return over finished seeds", title_justify="left")
    for c in cols:
        table.add_column(c, justify="left" if c in ("env", "algo", "run") else "right")
    for b in body:
        table.add_row(*b)
    console = Console()
    if not console.is_terminal:  # piped or logged: do not squeeze the table into 80 columns
        console = Console(width=200)
    console.print(table)
    left_out = unfinished(rows)
    if left_out:
        console.print(f"unfinished seeds, left out of the figures ({len(left_out)}):")
        for p in left_out:
            console.print(f"  {p}", soft_wrap=True)


def write_markdown(rows: list[dict[str, Any]], path: Path) -> None:
    cols, body = _display(rows)
    lines = ["# marl report", "",
             "Final evaluation return (last `eval/return_mean` of each seed's metrics.jsonl, or "
             "`eval/return_role/<role>` per role) over finished seeds: mean, "
             f"95% percentile-bootstrap CI of the mean ({BOOTSTRAP_RESAMPLES:,} resamples, seed {BOOTSTRAP_SEED}), "
             "IQM (mean of the middle 50% of seeds). Env steps, wall time and env statistics are per-seed means.", "",
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(b) + " |" for b in body]
    left_out = unfinished(rows)
    if left_out:
        lines += ["", f"Unfinished seeds (no `done` file), left out of the figures: {len(left_out)}", ""]
        lines += [f"- `{p}`" for p in left_out]
    path.write_text("\n".join(lines) + "\n\n![learning curves](curves.png)\n")


def csv_row(r: dict[str, Any]) -> dict[str, Any]:
    """A summary row as flat columns: config keys, per-role stats (``return_role/<role>/mean``), env stats."""
    flat = {k: v for k, v in r.items() if k not in ("config", "roles", "stats", "unfinished", "final_returns")}
    flat.update(r["config"])
    for role, st in r["roles"].items():
        flat.update({f"return_role/{role}/{k}": v for k, v in st.items()})
    flat.update(r["stats"])
    flat["final_returns"] = ";".join(f"{v:.6g}" for v in r["final_returns"])
    return flat


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    flat = [csv_row(r) for r in rows]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in flat for k in r)), restval="")
        w.writeheader()
        w.writerows(flat)


def marl_eval_data(seeds: list[SeedResult]) -> dict[str, Any]:
    """The marl-eval raw-data layout (github.com/instadeepai/marl-eval, README "Data Structure")::

        {env_name: {task_name: {algo_name: {"run_<k>": {"step_<i>": {"step_count": n, "return": [..]},
                                                        "absolute_metrics": {"return": [..]}}}}}}

    env_name is the env factory's package (``mpe2``), task_name marlcli's env name, algo_name
    the algorithm with its configuration (``mappo[critic=independent]``), ``run_<k>`` the k-th
    finished seed. marlcli logs the mean return of each evaluation, so each list holds one value.
    """
    data: dict[str, Any] = {}
    for (env, algo, _run, variant), group_seeds in group([s for s in seeds if s.done]).items():
        name = f"{algo}[{variant}]" if variant else algo
        algo_node = data.setdefault(group_seeds[0].suite, {}).setdefault(env, {}).setdefault(name, {})
        for s in group_seeds:
            run = {f"step_{i}": {"step_count": st, "return": [r]}
                   for i, (st, r) in enumerate(zip(s.eval_steps, s.eval_returns, strict=True))}
            run["absolute_metrics"] = {"return": [s.final_return]}
            algo_node[f"run_{len(algo_node)}"] = run
    return data


# ----------------------------------------------------------------------------- CLI
def report_main(args: list[str]) -> int:
    """``marl report PATH... [out=DIR] [--format marl-eval]``: any bad input or unwritable out=DIR is one line, exit 2."""
    fmt = None
    rest: list[str] = []
    it = iter(args)
    for a in it:
        if a == "--format":
            fmt = next(it, "")
            if not fmt or fmt.startswith("-"):
                return fail("report", "--format needs a value: --format marl-eval")
        elif a.startswith("--format="):
            fmt = a.split("=", 1)[1]
        elif a.startswith("-") and not Path(a).exists():
            flag = a.split("=", 1)[0]
            return fail("report", f"unknown flag '{flag}'{suggest(flag, ['--format'])}; the one flag is --format marl-eval "
                                  "(and out=DIR)")
        else:
            rest.append(a)
    if fmt is not None and fmt != "marl-eval":
        return fail("report", f"unknown --format '{fmt}'; the one format is marl-eval")
    try:
        parsed = parse_kv(rest, {"out": ""})
    except ValueError as exc:
        return fail("report", str(exc))
    try:
        return _report(parsed.paths, parsed.opts, fmt)
    except MarlError as exc:
        return fail("report", str(exc))


def _report(paths: list[str], opts: dict[str, Any], fmt: str | None) -> int:
    if not paths:
        return fail("report", "give at least one PATH (a run dir, or a dir holding many)")
    seed_dirs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            return fail("report", f"{p} is not a directory; give run dirs or a dir holding them")
        found = find_seed_dirs(p)
        if not found:
            return fail("report", f"no results under {p} (expected <env>/<algo>/<run>/[<config>/]seed_*/metrics.jsonl)")
        seed_dirs += found
    seeds = [load_seed(d) for d in dict.fromkeys(seed_dirs)]
    groups = group(seeds)
    rows = summary_rows(groups)
    out = Path(opts["out"]) if opts["out"] else Path(paths[0])
    if out.exists() and not out.is_dir():
        return fail("report", f"out={out} is a file, not a directory; choose out=DIR")
    print_table(rows)
    try:  # out=DIR read-only, full, or a file in its way: one line naming it
        out.mkdir(parents=True, exist_ok=True)
        write_markdown(rows, out / "report.md")
        write_csv(rows, out / "report.csv")
        plot_curves(groups, out / "curves.png")
        written = ["report.md", "report.csv", "curves.png"]
        written += write_all(list(dict.fromkeys(seed_dirs)), out)  # self-play runs: their snapshots' payoff matrix
        if fmt == "marl-eval":
            (out / "marl_eval.json").write_text(json.dumps(marl_eval_data(seeds), indent=1) + "\n")
            written.append("marl_eval.json")
    except OSError as exc:
        return fail("report", os_error(out, exc))
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    return 0
