"""Run-lifecycle seams (issue 25): stop cleanly and resume exactly, Slurm requeue, resume edge cases,
full disks and read-only dirs, file modes under the user's umask."""

from __future__ import annotations

import errno
import json
import os
import random
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_cfg, strip_time

from marlcli import results, sweep, trainer
from marlcli.cli import main
from marlcli.trainer import train

ROOT = Path(__file__).resolve().parents[2]
# 20 updates of 100 env steps: long enough to signal mid-run, short enough for the suite
ARGS = ["env=spread", "env.backend=native", "env.num_envs=4", "algo.rollout_steps=25", "algo.epochs=1",
        "train.total_steps=2000", "train.eval_interval=500", "train.eval_episodes=4", "train.eval_envs=4",
        "train.checkpoint_interval=500", "train.log_interval=100", "logger.progress=false", "device=cpu"]
SHORT = [*ARGS[:5], "train.total_steps=300", "train.eval_interval=100", *ARGS[7:9], "train.checkpoint_interval=100",
         *ARGS[10:]]


def with_(args: list[str], *changes: str) -> list[str]:
    """``args`` with the keys of ``changes`` replaced."""
    keys = {c.split("=", 1)[0] for c in changes}
    return [a for a in args if a.split("=", 1)[0] not in keys] + list(changes)


def env_1_thread() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def wait_for_line(path: Path, proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    """Poll ``metrics.jsonl`` until it has a line (training has started), as a user watching it would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"no metrics line in {path}")


def weights(seed_dir: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(seed_dir / "checkpoints" / "latest.pt", map_location="cpu", weights_only=True)
    return {f"{part}.{k}": v for part in ("actor", "learner") for k, v in _flat(payload[part]).items()}


def _flat(node: object, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(node, torch.Tensor):
        return {prefix: node}
    if isinstance(node, dict):
        return {k: v for key, sub in node.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    if isinstance(node, (list, tuple)):
        return {k: v for i, sub in enumerate(node) for k, v in _flat(sub, f"{prefix}{i}.").items()}
    return {}


def same_run(a: Path, b: Path) -> None:
    """Identical metrics (time fields aside) and identical final weights."""
    assert strip_time(results.read_metrics(a / "metrics.jsonl")) == strip_time(results.read_metrics(b / "metrics.jsonl"))
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])]


# ----------------------------------------------------------------------------- stop cleanly, resume exactly
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The runs the interrupted ones must reproduce: ARGS to the end, seeds 0 and 1, on CPU, one thread."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("uninterrupted")
    return {k: train(make_cfg(f"results_dir={root}", "run=r", f"seed={k}", *ARGS)) for k in (0, 1)}


def test_signals_stop_with_a_checkpoint_and_resume_exactly(tmp_path: Path, uninterrupted: dict[int, Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A real `marl train` per signal, signalled at a random moment after its first metrics line; the
    printed resume command (or resume=auto) then ends where the uninterrupted run ends."""
    torch.set_num_threads(1)
    ref = uninterrupted[0]
    codes = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGUSR1: 138}
    procs = {}
    for sig in codes:
        cmd = [str(ROOT / ".venv" / "bin" / "marl"), "train", f"results_dir={tmp_path / sig.name}", "run=r", *ARGS]
        procs[sig] = subprocess.Popen(cmd, cwd=tmp_path, env=env_1_thread(), text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
    rng = random.Random()
    for sig, proc in procs.items():
        seed_dir = tmp_path / sig.name / "spread" / "mappo" / "r" / "seed_0"
        wait_for_line(seed_dir / "metrics.jsonl", proc)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(sig)
    for sig, proc in procs.items():
        seed_dir = tmp_path / sig.name / "spread" / "mappo" / "r" / "seed_0"
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == codes[sig], (sig, err)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err and "results:" not in out
        [line] = [ln for ln in err.splitlines() if "resume=" in ln]
        assert line == (f"marl train: stopped by {sig.name} at step {line.split(' at step ')[1].split(' ')[0]} of "
                        f"2,000 (checkpoint written); continue with: marl train resume={seed_dir}")
        step = int(line.split(" at step ")[1].split(" ")[0].replace(",", ""))
        assert 0 < step < 2000
        assert results.load_checkpoint(seed_dir, results.RESUME_KEYS)["step"] == step
        assert not (seed_dir / "done").exists()
        assert results.read_metrics(seed_dir / "metrics.jsonl")[-1]["step"] == step  # flushed up to the stop
        log = (seed_dir / "train.log").read_text().splitlines()
        assert f"stopped by {sig.name} at step {step:,}" in log[-1] and "error" not in log[-1]
        # continue: the printed command for SIGTERM, resume=auto with the same options for the others
        again = shlex.split(line.split("continue with: ")[1])[1:] if sig == signal.SIGTERM else \
            ["train", f"results_dir={tmp_path / sig.name}", "run=r", *ARGS, "resume=auto"]
        assert main(again) == 0, capsys.readouterr().err
        assert (seed_dir / "done").exists()
        same_run(seed_dir, ref)


def test_a_second_ctrl_c_aborts_at_once_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C, then Ctrl-C again while the stop checkpoint is being written: exit 130, one line, no traceback,
    no torn checkpoint (the last one stays loadable)."""
    real_update, real_save = trainer.Rollout.from_steps, results.save_checkpoint
    calls = {"rollouts": 0}

    def rollout(steps):  # noqa: ANN001, ANN202 - Ctrl-C during the 5th rollout
        calls["rollouts"] += 1
        if calls["rollouts"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return real_update(steps)

    def save(ckpt_dir: Path, step: int, payload: dict, keep: int = 0) -> Path:
        if step == 500:
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, while writing the stop checkpoint
        return real_save(ckpt_dir, step, payload, keep)

    monkeypatch.setattr(trainer.Rollout, "from_steps", staticmethod(rollout))
    monkeypatch.setattr(results, "save_checkpoint", save)
    capsys.readouterr()
    assert main(["train", f"results_dir={tmp_path}", "run=r", *with_(ARGS, "train.checkpoint_interval=300")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    [line] = [ln for ln in err if "resume=" in ln]
    seed_dir = tmp_path / "spread" / "mappo" / "r" / "seed_0"
    assert line == f"marl train: aborted by a second Ctrl-C; continue from the last checkpoint with: marl train " \
                   f"resume={seed_dir}"
    assert results.load_checkpoint(seed_dir, results.RESUME_KEYS)["step"] == 300
    assert not list((seed_dir / "checkpoints").glob(".*"))  # no temp file left
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back


def test_stop_request_handlers_only_note_the_signal() -> None:
    with trainer.StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGUSR2)  # submitit's time-limit signal: noted, not fatal
        assert stop.signum == signal.SIGUSR2
        os.kill(os.getpid(), signal.SIGTERM)  # another signal while stopping changes nothing
        assert stop.signum == signal.SIGUSR2
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    assert trainer.STOP_SIGNALS == {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGUSR1: 138,
                                    signal.SIGUSR2: 140}
    assert issubclass(trainer.Stopped, trainer.TrainingError)


# ----------------------------------------------------------------------------- resume edge cases (item 7)
@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run (checkpoints at 100, 200, 300) with an evaluation and an export beside it."""
    torch.set_num_threads(1)
    out = train(make_cfg(f"results_dir={tmp_path_factory.mktemp('fin')}", "run=base", *SHORT))
    (out / "eval.json").write_text('{"return_mean": 1.0}\n')
    (out / "eval_comm.json").write_text("{}\n")
    (out / "export").mkdir()
    (out / "export" / "manifest.json").write_text("{}\n")
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "spread" / "mappo" / "base" / "seed_0"
    shutil.copytree(run, dst)
    (dst / "config.yaml").write_text((dst / "config.yaml").read_text().replace(str(run.parents[3]), str(tmp_path)))
    return dst


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_resume_from_an_older_step_makes_it_latest(finished: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Resumed from step_100.pt, the run dies before its next checkpoint: the seed dir must hold the branch
    it resumed (step 100), not the abandoned one (step 300), for resume=<dir> and marl eval alike."""
    out = copy_of(finished, tmp_path)
    real = trainer.Rollout.from_steps

    def dies(steps):  # noqa: ANN001, ANN202
        raise RuntimeError("killed")

    monkeypatch.setattr(trainer.Rollout, "from_steps", staticmethod(dies))
    with pytest.raises(RuntimeError, match="killed"):
        train(make_cfg(f"resume={out / 'checkpoints' / 'step_100.pt'}", "train.total_steps=1"))
    monkeypatch.setattr(trainer.Rollout, "from_steps", staticmethod(real))
    assert results.load_checkpoint(out)["step"] == 100  # what resume=<dir>, marl eval and marl export load
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest.pt", "step_100.pt"]
    for stale in ("done", "eval.json", "eval_comm.json", "export"):
        assert not (out / stale).exists(), stale


def test_a_fresh_restart_clears_every_file_of_the_run(finished: Path, tmp_path: Path) -> None:
    out = copy_of(finished, tmp_path)
    for p in (out / "checkpoints").iterdir():
        p.write_bytes(b"garbage")  # nothing readable: resume=auto starts afresh
    (out / "done").unlink()
    (out / "pool").mkdir()
    train(make_cfg(f"results_dir={tmp_path}", "run=base", *with_(SHORT, "train.total_steps=100"), "resume=auto"))
    assert not (out / "eval_comm.json").exists() and not (out / "export").exists() and not (out / "pool").exists()
    assert not (out / "eval.json").exists()
    assert results.load_checkpoint(out)["step"] == 100


def test_resuming_a_finished_run_changes_nothing(finished: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    capsys.readouterr()
    assert main(["train", f"resume={out}"]) == 0
    err = capsys.readouterr().err.strip()
    assert err == f"marl train: {out} already finished at step 300; nothing to do (give train.total_steps=M with " \
                  "M > 300 to extend it)"
    assert snapshot(out) == before  # eval.json kept, no second final evaluation appended
    assert main(["train", f"resume={out}", "train.total_steps=400"]) == 0  # a larger budget extends it
    assert results.load_checkpoint(out)["step"] == 400


@pytest.mark.parametrize(("option", "named"), [("algo=qmix", "algo=mappo, not algo=qmix"),
                                               ("algo.lr=0.5", "algo.lr=0.002, not algo.lr=0.5"),
                                               ("seed=3", "seed=0, not seed=3"),
                                               ("critic=independent", "critic=centralized, not critic=independent")])
def test_resume_refuses_options_that_contradict_the_run(finished: Path, tmp_path: Path, option: str, named: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    capsys.readouterr()
    assert main(["train", option, f"resume={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and named in err and f"resume={out}" in err, err
    assert snapshot(out) == before
    # what a resume may change: the budget, logging, device, checkpointing
    assert main(["train", f"resume={out}", "device=cpu", "logger.progress=false", "train.checkpoint_minutes=5"]) == 0


# ----------------------------------------------------------------------------- full disks, read-only dirs (10b)
CAUSES = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system",
          errno.EACCES: "permission denied"}


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def full_disk_for(code: int, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files whose temp name holds ``name`` fail to write with ``OSError(code)``, as on a full or read-only disk."""
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f) -> None:  # noqa: ANN001
            self.f = f

        def write(self, data) -> int:  # noqa: ANN001
            raise OSError(code, os.strerror(code))

        def __getattr__(self, attr: str):  # noqa: ANN204
            return getattr(self.f, attr)

        def __enter__(self):  # noqa: ANN204
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    def fdopen(fd: int, *a, **kw):  # noqa: ANN002, ANN003, ANN202
        f = real_fdopen(fd, *a, **kw)
        return Full(f) if name in _fd_path(fd) else f

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("code", sorted(CAUSES))
def test_a_failing_results_write_names_the_file_and_the_cause(tmp_path: Path, code: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    full_disk_for(code, "step_7", monkeypatch)
    with pytest.raises(results.WriteError) as info:
        results.save_checkpoint(tmp_path, 7, {"x": torch.zeros(3)})
    assert str(info.value) == f"cannot write {tmp_path / 'step_7.pt'}: {CAUSES[code]} ({errno.errorcode[code]})"
    assert list(tmp_path.iterdir()) == []  # no temp file, no torn step_7.pt


def test_a_failing_checkpoint_write_ends_the_run_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The disk fills while step_200.pt is written: one line naming that file and the cause, at once (not
    after training), step 100 stays the loadable checkpoint, metrics.jsonl stays valid, no temp file left."""
    code = errno.ENOSPC
    full_disk_for(code, "step_200", monkeypatch)
    capsys.readouterr()
    assert main(["train", f"results_dir={tmp_path}", "run=r", *SHORT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    out = tmp_path / "spread" / "mappo" / "r" / "seed_0"
    [line] = [ln for ln in err if ln.startswith("marl train:")]
    assert "Traceback" not in "\n".join(err)
    assert line.startswith(f"marl train: error: cannot write {out / 'checkpoints' / 'step_200.pt'}: {CAUSES[code]}")
    assert f"{out / 'checkpoints' / 'latest.pt'} is intact" in line and f"resume={out}" in line
    assert results.load_checkpoint(out, results.RESUME_KEYS)["step"] == 100
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest.pt", "step_100.pt"]
    lines = results.read_metrics(out / "metrics.jsonl")  # valid JSON lines
    assert lines[-1]["step"] == 200  # it stopped at the failing write, not at the end of training
    assert CAUSES[code] in (out / "train.log").read_text().splitlines()[-1]


def test_a_full_disk_under_metrics_jsonl_leaves_whole_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The line of step 200 is half written when the disk fills: the run ends there, in one line, and
    metrics.jsonl keeps only whole lines; the checkpoint of step 100 stays loadable."""
    real_write = os.write
    state = {"full": False}

    def write(fd: int, data) -> int:  # noqa: ANN001
        if _fd_path(fd).endswith("metrics.jsonl"):
            if state["full"]:
                raise OSError(errno.ENOSPC, "No space left on device")
            if b'"step": 200,' in bytes(data):
                state["full"] = True
                return real_write(fd, bytes(data)[: len(data) // 2])  # a partial write, then the disk is full
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    capsys.readouterr()
    assert main(["train", f"results_dir={tmp_path}", "run=r", *SHORT]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    out = tmp_path / "spread" / "mappo" / "r" / "seed_0"
    [line] = [ln for ln in err if ln.startswith("marl train:")]
    assert line.startswith(f"marl train: error: cannot write {out / 'metrics.jsonl'}: no space left on device"), line
    text = (out / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    assert [json.loads(x)["step"] for x in text.splitlines()][-1] == 100
    assert results.load_checkpoint(out, results.RESUME_KEYS)["step"] == 100
    monkeypatch.setattr(os, "write", real_write)
    assert main(["train", f"resume={out}"]) == 0  # once there is room, it continues from step 100
    assert results.read_metrics(out / "metrics.jsonl")[-1]["step"] == 300


def test_a_read_only_results_dir_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:  # root writes through mode bits: refuse what a read-only mount would
        real_mkdir, real_open = os.mkdir, os.open

        def mkdir(path, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            if str(path).startswith(str(ro)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_mkdir(path, *a, **kw)

        def open_(path, flags, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            if str(path).startswith(str(ro)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, *a, **kw)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", open_)
        cause = "read-only file system"
    else:
        ro.chmod(0o555)
        cause = "permission denied"
    capsys.readouterr()
    assert main(["train", f"results_dir={ro}", "run=r", *SHORT]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"marl train: error: cannot write {ro / 'spread'}") and cause in err, err
    assert "\n" not in err


# ----------------------------------------------------------------------------- the user's umask (10c)
def test_results_files_follow_the_umask(tmp_path: Path) -> None:
    """umask 022 -> 0644 (they were 0600: unreadable to collaborators on a shared cluster dir)."""
    old = os.umask(0o022)
    try:
        out = train(make_cfg(f"results_dir={tmp_path}", "run=r", *with_(SHORT, "train.total_steps=100")))
        assert main(["eval", str(out), "episodes=2", "envs=2"]) == 0
        os.umask(0o027)
        results.atomic_write_text(tmp_path / "other.txt", "x\n")
    finally:
        os.umask(old)
    files = [out / "config.yaml", out / "metrics.jsonl", out / "train.log", out / "done", out / "eval.json",
             out / "checkpoints" / "latest.pt", out / "checkpoints" / "step_100.pt"]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o644" for p in files}
    assert stat.S_IMODE((tmp_path / "other.txt").stat().st_mode) == 0o640


# ----------------------------------------------------------------------------- Slurm requeue (emulated)
SBATCH = '''
import json, os, re, subprocess, sys
script = open(sys.argv[1]).read()
m = re.search(r"--array=(\\d+)-(\\d+)", script)
tasks = int(m.group(2)) - int(m.group(1)) + 1 if m else 1
folder = [ln for ln in script.splitlines() if "submitit.core._submit" in ln][0].split()[-1]
state = os.environ["FAKE_SLURM_DIR"]
log = open(os.path.join(state, "runner.log"), "a")
subprocess.Popen([sys.executable, os.path.join(state, "runner.py"), "4242", str(tasks), folder], stdout=log,
                 stderr=subprocess.STDOUT, start_new_session=True)
print("Submitted batch job 4242")
'''

# The cluster's side of one array job: start each task's submitit process with Slurm's variables; on the
# first attempt send it the time-limit signal (USR2, submitit's) once its run has started - to the whole
# process group (task 0: slurmstepd signals every process of the step) or to the task's process alone
# (task 1) -; rerun a task that `scontrol requeue` marked, as Slurm does.
RUNNER = '''
import json, os, random, signal, subprocess, sys, threading, time
from pathlib import Path
job, ntasks, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
state = Path(os.environ["FAKE_SLURM_DIR"])
watch = json.loads(os.environ["FAKE_SLURM_WATCH"])

def run(k):
    env = {**os.environ, "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": str(int(job) + 1 + k), "SLURM_ARRAY_JOB_ID": job,
           "SLURM_ARRAY_TASK_ID": str(k), "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
           "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "localhost", "SLURM_CPUS_PER_TASK": "1"}
    for attempt in range(4):
        env["SLURM_RESTART_COUNT"] = str(attempt)
        with open(state / f"task{k}_attempt{attempt}.log", "w") as log:
            p = subprocess.Popen([sys.executable, "-u", "-m", "submitit.core._submit", folder], env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
            if attempt == 0:
                metrics = Path(watch[str(k)])
                while p.poll() is None and not (metrics.exists() and metrics.read_text().strip()):
                    time.sleep(0.02)
                time.sleep(random.uniform(0.0, 0.3))
                if k == 0:
                    os.killpg(p.pid, signal.SIGUSR2)
                else:
                    p.send_signal(signal.SIGUSR2)
            p.wait()
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the job's leftovers go with it
            except ProcessLookupError:
                pass
        marker = state / f"requeue_{job}_{k}"
        if not marker.exists():
            break
        marker.unlink()
    (state / f"task{k}.attempts").write_text(str(attempt + 1))

threads = [threading.Thread(target=run, args=(k,)) for k in range(ntasks)]
for t in threads:
    t.start()
for t in threads:
    t.join()
'''


def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watch: dict[int, Path]) -> Path:
    """sbatch / scontrol / sacct / srun on PATH, backed by RUNNER: what submitit sees of a cluster."""
    state, bin_dir = tmp_path / "slurm_state", tmp_path / "bin"
    state.mkdir()
    bin_dir.mkdir()
    (state / "runner.py").write_text(RUNNER)
    scripts = {"sbatch": f"#!{sys.executable}\n{SBATCH}",
               "scontrol": f'#!/bin/sh\n[ "$1" = requeue ] && touch "{state}/requeue_$2"\n',
               "sacct": "#!/bin/sh\necho 'JobID|State|NodeList'\n", "srun": "#!/bin/sh\nexit 0\n"}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.setenv("FAKE_SLURM_WATCH", json.dumps({str(k): str(v) for k, v in watch.items()}))
    for key, value in env_1_thread().items():
        monkeypatch.setenv(key, value)
    return state


def test_slurm_requeues_a_timed_out_job_and_it_continues_from_its_checkpoint(
        tmp_path: Path, uninterrupted: dict[int, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`marl train -m hydra/launcher=slurm` on an emulated cluster: both jobs get the time-limit signal mid-run,
    checkpoint, are requeued by submitit (max_num_timeout > 0 in conf/hydra/launcher/slurm.yaml) and finish
    with the metrics and weights of an uninterrupted run."""
    torch.set_num_threads(1)
    res = tmp_path / "res"
    seed_dirs = {k: res / "spread" / "mappo" / "slurm" / f"seed_{k}" for k in (0, 1)}
    state = fake_slurm(tmp_path, monkeypatch, {k: d / "metrics.jsonl" for k, d in seed_dirs.items()})
    rc = main(["train", "-m", "hydra/launcher=slurm", "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=40",
               "seed=0,1", f"results_dir={res}", "run=slurm", *ARGS])
    err = capsys.readouterr().err
    logs = {p.name: p.read_text()[-2000:] for p in state.glob("*.log")}
    assert rc == 0, (err, logs)
    assert [r["status"] for r in sweep.read_statuses(res / ".sweeps" / "slurm")] == ["resumed", "resumed"], logs
    deadline = time.monotonic() + 60
    while not all((state / f"task{k}.attempts").exists() for k in (0, 1)) and time.monotonic() < deadline:
        time.sleep(0.1)  # the emulated cluster notes the attempts once the task's processes are gone
    assert [(state / f"task{k}.attempts").read_text() for k in (0, 1)] == ["2", "2"]  # scontrol requeue, once each
    for k, seed_dir in seed_dirs.items():
        log = (seed_dir / "train.log").read_text()
        # task 1's training process only heard of it through run_job's handler (SIGUSR1); task 0's got both
        assert ("stopped by SIGUSR1" in log or (k == 0 and "stopped by SIGUSR2" in log)) and " resume " in log, log
        same_run(seed_dir, uninterrupted[k])
