"""The trainer: exact resume, atomic checkpoints, 2-process training, backends, schedule."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import msca_kernels as mk
from msca.models import VGGWeightsWarning
from msca.options import Options
from msca.train import (ShardedOrder, Trainer, TrainSettings, atomic_save, load_config,
                        load_generator, read_checkpoint, stage_bounds)
from msca.train import checkpoint as ckpt_mod

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A tiny model (32 px patches -> 2 px at scale 4: instance norm needs > 1 pixel), so a step takes
# milliseconds; 6 steps cover all three stages (2 pretrain, 2 patch, 2 patch+global).
TINY = dict(num_classes=12, image_feature_nc=(4, 4, 4, 4, 4), label_feature_nc=(4, 4, 4, 4, 4),
            attention_k=(2, 2, 2, 2, 2), ngf=4, ngf_mults=(1, 1, 1, 1, 1), spade_hidden=4,
            spade_norm="spadeinstance3x3", ndf=4, n_layers_D=2, num_D=1, load_size=64,
            crop_size=32, late_crop_size=48, batch_size=2, pretrain_epochs=1, epochs=2,
            patch_only_epochs=1, backend="reference")


def tiny(**kw) -> Options:
    return Options(**{**TINY, **kw})


def settings(**kw) -> TrainSettings:
    return TrainSettings(**{"steps": 6, "checkpoint_every": 100, "log_every": 1,
                            "train_scenes": 16, "lambda_l1": 1.0, **kw})


def make(tmp, opt=None, st=None, **kw) -> Trainer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VGGWeightsWarning)
        return Trainer(opt or tiny(), st or settings(), str(tmp), progress=False, **kw)


def params(t: Trainer) -> dict:
    out = {}
    for name, m in (("G", t.G), ("D", t.D), ("dec", t.decoder)):
        out.update({f"{name}.{k}": v.detach().clone() for k, v in m.state_dict().items()})
    return out


def test_schedule_covers_all_stages(tmp_path):
    t = make(tmp_path)
    assert [t.stage_at(s) for s in range(6)] == ["pretrain"] * 2 + ["patch"] * 2 + \
        ["patch_global"] * 2
    # the paper's 20/20/20 epochs
    assert stage_bounds(Options(pretrain_epochs=20, epochs=40, patch_only_epochs=20), 600) \
        == (200, 400)


def test_batches_follow_the_patch_schedule(tmp_path):
    t = make(tmp_path)
    early = t._batch(2, "patch")
    late = t._batch(4, "patch_global")
    assert early["image_p"].shape == (2, 3, 32, 32) and "image" not in early
    assert late["image_p"].shape == (2, 3, 32, 32)  # 48 crops resized to 32
    assert late["image"].shape == (2, 3, 32, 32) and late["label"].shape == (2, 32, 32)
    # disjoint 32 px patches of a 64 px image: p and q are different pixels
    assert not torch.equal(early["image_p"], early["image_q"])


def test_exact_resume_after_crash(tmp_path):
    straight = make(tmp_path / "a")
    losses_a = [straight.train_step() for _ in range(6)]

    run = make(tmp_path / "b", st=settings(checkpoint_every=3))
    run.train(3)                      # checkpoint at step 3
    assert read_checkpoint(run.checkpoint_path)["step"] == 3
    run.train_step()                  # step 4 happens, is never saved ...
    del run                           # ... and the process "crashes"

    resumed = make(tmp_path / "b", st=settings(checkpoint_every=3), resume=True)
    assert resumed.step == 3 and resumed.stage == "patch"
    losses_b = [resumed.train_step() for _ in range(3)]

    assert losses_b == losses_a[3:]   # bit-identical floats, every term
    pa, pb = params(straight), params(resumed)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k
    # and training did move the weights (the comparison above is not vacuous)
    fresh = params(make(tmp_path / "c"))
    assert any(not torch.equal(fresh[k], pa[k]) for k in pa)


def test_checkpoint_contents(tmp_path):
    t = make(tmp_path)
    t.train(2)
    ck = read_checkpoint(t.checkpoint_path)
    for key in ("G", "D", "decoder", "opt_pre", "opt_G", "opt_D", "step", "stage", "rng",
                "data", "options", "train"):
        assert key in ck
    assert set(ck["rng"]) >= {"python", "numpy", "torch"}
    assert ck["data"] == t.order.state_dict() and ck["step"] == 2


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_save({"format": "x", "value": 1}, str(path))
    real_save = torch.save

    def broken_save(obj, fh, *a, **k):
        fh.write(b"partial garbage")  # half a file, then the "crash"
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"format": "x", "value": 2}, str(path))
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert torch.load(path, weights_only=False)["value"] == 1
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temporary file left behind


def test_saved_file_has_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_save({"format": "x"}, str(tmp_path / "a.pt"))
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600


def test_resume_without_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        make(tmp_path / "none", resume=True)


def test_sharded_order_is_disjoint_and_resumable():
    a, b = ShardedOrder(10, 0, 0, 2), ShardedOrder(10, 0, 1, 2)
    ea, eb = a.take(5), b.take(5)
    assert sorted(ea + eb) == list(range(10))  # one epoch, split between the ranks
    state = a.state_dict()
    nxt = a.take(3)
    c = ShardedOrder(10, 0, 0, 2)
    c.load_state_dict(state)
    assert c.take(3) == nxt
    assert state == {"epoch": 0, "cursor": 5} and a.state_dict() == {"epoch": 1, "cursor": 3}


def test_export_and_load_generator(tmp_path):
    t = make(tmp_path)
    t.train(1)
    t.export(str(tmp_path / "small.pt"))
    G, opt = load_generator(str(tmp_path / "small.pt"))
    assert opt.num_classes == 12 and not G.training
    assert os.path.getsize(tmp_path / "small.pt") < os.path.getsize(t.checkpoint_path)
    for k, v in t.G.state_dict().items():
        assert torch.equal(G.state_dict()[k], v), k


def test_bf16_autocast_step_runs(tmp_path):
    t = make(tmp_path, st=settings(bf16=True))
    for _ in range(5):  # into the GAN stages
        losses = t.train_step()
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())


def test_gap_ablation_trains(tmp_path):
    t = make(tmp_path, opt=tiny(alignment="gap"))
    for _ in range(3):
        t.train_step()


def _cpu_backend_runs() -> str | None:
    """Why the cpu backend cannot run a whole generator here, or None if it can."""
    status = mk.available_backends().get("cpu")
    if not status:
        return f"cpu backend: {getattr(status, 'reason', 'unavailable')}"
    x = torch.randn(1, 4, 4, 4)
    try:
        mk.nn.SPADE("spadeinstance3x3", 4, 3, nhidden=4, backend="cpu")(x, torch.randn(1, 3, 4, 4))
    except NotImplementedError as e:
        return f"cpu backend has no SPADE kernel in this build: {str(e)[:80]}"
    return None


def test_cpu_backend_step_matches_reference(tmp_path):
    why = _cpu_backend_runs()
    if why:
        pytest.skip(why)
    ref = make(tmp_path / "ref", opt=tiny(backend="reference"))
    cpu = make(tmp_path / "cpu", opt=tiny(backend="cpu"))
    for _ in range(5):  # pretrain, patch and patch+global steps
        lr, lc = ref.train_step(), cpu.train_step()
        assert lr.keys() == lc.keys()
        for k in lr:
            assert lc[k] == pytest.approx(lr[k], rel=2e-3, abs=2e-4), k


def test_config_loading(tmp_path):
    opt, st = load_config(os.path.join(REPO, "configs", "demo_train.json"))
    assert opt.name == "demo" and st.steps >= 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {"stepz": 3}}))
    with pytest.raises(ValueError, match="stepz"):
        load_config(str(bad))


WORKER = textwrap.dedent("""
    import os, sys, warnings, torch
    sys.path.insert(0, {tests!r})
    import test_train as tt
    from msca.train import Trainer, init_distributed
    rank, world = init_distributed()
    assert world == 2, world
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = Trainer(tt.tiny(), tt.settings(steps=5, checkpoint_every=5), {out!r},
                    progress=False)
    t.train()  # 5 steps, all three stages; rank 0 saves at the end, the other waits
    torch.save({{"params": tt.params(t), "order": t.order.state_dict()}},
               os.path.join({out!r}, f"rank{{rank}}.pt"))
    torch.distributed.destroy_process_group()
""")


def run_two_ranks(worker: str, tmp_path) -> subprocess.CompletedProcess:
    """torchrun a worker script (a template with {tests} and {out}) on 2 CPU processes."""
    script = tmp_path / "worker.py"
    script.write_text(worker.format(tests=os.path.dirname(os.path.abspath(__file__)),
                                    out=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script)], env=env,
                          capture_output=True, text=True, timeout=180, cwd=REPO)


def test_two_process_training_keeps_ranks_identical(tmp_path):
    proc = run_two_ranks(WORKER, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["params"].keys() == r1["params"].keys()
    for k in r0["params"]:
        assert torch.equal(r0["params"][k], r1["params"][k]), k
    assert r0["order"] == r1["order"]
    # the two ranks trained on different data: a single process on rank 0's shard alone
    # (no all-reduce) ends elsewhere, so the all-reduce did something
    solo = make(tmp_path / "solo", st=settings(steps=5))
    for _ in range(5):
        solo.train_step()
    ps = params(solo)
    assert any(not torch.equal(ps[k], r0["params"][k]) for k in ps)
    assert os.path.isfile(tmp_path / "checkpoint.pt")  # rank 0 wrote the checkpoint


BUSY_WORKER = textwrap.dedent("""
    import os, sys, warnings
    sys.path.insert(0, {tests!r})
    import test_train as tt
    from msca.train import Trainer, init_distributed
    from msca.train.run_guard import RunFolderError
    rank, world = init_distributed()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Trainer(tt.tiny(), tt.settings(steps=5), {out!r}, progress=False)
    except RunFolderError as e:
        print(f"rank {{rank}} refused: {{e}}", flush=True)
        sys.exit(3)
    print(f"rank {{rank}} went on", flush=True)
""")


def test_busy_folder_stops_every_rank(tmp_path):
    """Only rank 0 holds the folder's lock, but a refusal must stop all ranks; before, the
    other rank went on into its first collective and waited there for ever."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / "train.lock").write_text(json.dumps(
            {"pid": sleeper.pid, "host": os.uname().nodename, "started": "x"}))
        proc = run_two_ranks(BUSY_WORKER, tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "went on" not in out, out[-3000:]
    assert "rank 0 refused: " in out and f"pid {sleeper.pid}" in out, out[-3000:]
    assert "rank 1 refused: " in out and "rank 0 stopped at the run folder check" in out, \
        out[-3000:]


def test_exemplar_subcrop_shrinks_only_the_exemplar(tmp_path):
    plain = make(tmp_path / "a")
    sub = make(tmp_path / "b", opt=tiny(exemplar_subcrop=1.0))
    b0, b1 = plain._batch(3, "patch"), sub._batch(3, "patch")
    # the first item's target patch is untouched (later items' draws shift), its exemplar is a
    # zoomed window of the same exemplar patch: no class it did not have
    assert torch.equal(b0["image_p"][0], b1["image_p"][0])
    assert torch.equal(b0["label_p"][0], b1["label_p"][0])
    assert b1["image_q"].shape == b0["image_q"].shape
    assert not torch.equal(b0["image_q"][0], b1["image_q"][0])
    assert set(b1["label_q"][0].unique().tolist()) <= set(b0["label_q"][0].unique().tolist())
    with pytest.raises(ValueError, match="exemplar_subcrop"):
        tiny(exemplar_subcrop=1.5)


def test_exemplar_subcrop_is_a_resized_window():
    import numpy as np
    from msca.data.transforms import exemplar_subcrop
    ramp = torch.arange(40.0)
    img = ((ramp[:, None] + 2 * ramp[None, :]) / 120 - 0.5).expand(3, 40, 40)  # bilinear-exact
    lab = torch.arange(40 * 40).reshape(40, 40) % 7
    out, out_lab = exemplar_subcrop(np.random.default_rng(5), img, lab, lo=0.5, hi=0.5)
    rng = np.random.default_rng(5)
    rng.uniform(0.5, 0.5)
    y, x = int(rng.integers(0, 21)), int(rng.integers(0, 21))
    win = img[:, y:y + 20, x:x + 20]
    # x2 bilinear samples a quarter pixel before each window pixel (away from the borders)
    shifted = win - 0.25 * (1 + 2) / 120
    assert torch.allclose(out[:, 2::2, 2::2], shifted[:, 1:, 1:], atol=1e-5)
    assert torch.equal(out_lab[::2, ::2], lab[y:y + 20, x:x + 20])


def test_pixel_mse_term_is_logged_and_weighted(tmp_path):
    """train.lambda_mse adds w * lambda_mse * MSE(fake, real) per task in the GAN stages: the
    logged term divided by its weight is the MSE of the step's fake (checked through the
    ratio of two weights on identical steps), and a negative weight is refused by name."""
    t1 = make(tmp_path / "a", st=settings(lambda_mse=2.0))
    t2 = make(tmp_path / "b", st=settings(lambda_mse=6.0))
    for t in (t1, t2):
        t.step = 2                      # the patch stage (no pretraining step needed)
    l1, l2 = t1.train_step(), t2.train_step()
    assert "cross/mse" in l1 and "pre/mse" not in l1
    assert l1["cross/mse"] > 0
    assert l2["cross/mse"] == pytest.approx(3.0 * l1["cross/mse"], rel=1e-5)
    with pytest.raises(ValueError, match="train.lambda_mse"):
        TrainSettings(lambda_mse=-1.0).validate()


def test_global_exemplar_flip_mirrors_only_the_exemplar(tmp_path):
    """global_exemplar_flip=1: the global task reconstructs x from flip(x) (the target and its
    label stay as drawn); 0 (the paper's task) leaves no separate exemplar in the batch, so the
    random stream of older configs is unchanged."""
    t = make(tmp_path / "a", opt=tiny(global_exemplar_flip=1.0))
    late = t._batch(4, "patch_global")
    assert torch.equal(late["image_ex"], late["image"].flip(-1))
    assert torch.equal(late["label_ex"], late["label"].flip(-1))
    (c, x2, c2), real = t._tasks(late, late=True)["global"]
    assert torch.equal(x2, late["image"].flip(-1)) and torch.equal(real, late["image"])
    plain = make(tmp_path / "b")._batch(4, "patch_global")
    assert "image_ex" not in plain
    assert torch.equal(plain["image"], late["image"])
    with pytest.raises(ValueError, match="global_exemplar_flip"):
        tiny(global_exemplar_flip=1.5).validate()


def test_absent_class_weight_weighs_pixels_of_classes_the_exemplar_lacks(tmp_path):
    """The pixel weights: absent_class_weight on target pixels whose class is not in the
    exemplar's labels (the ignore label never), 1 elsewhere; weight 1 gives plain means."""
    t = make(tmp_path / "a", st=settings(absent_class_weight=4.0))
    label = torch.tensor([[[0, 1], [2, 255]]])
    exemplar_label = torch.tensor([[[1, 1], [1, 3]]])
    w = t._pixel_weights(label, exemplar_label)
    assert w.tolist() == [[[[4.0, 1.0], [4.0, 1.0]]]]
    assert make(tmp_path / "b")._pixel_weights(label, exemplar_label) is None
    t.step = 2
    assert t.train_step()["cross/l1"] > 0
    with pytest.raises(ValueError, match="absent_class_weight"):
        TrainSettings(absent_class_weight=-1.0).validate()
