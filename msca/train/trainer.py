"""The self-supervised trainer of paper Sec. 3.4 and Appendices F-G.

Stages, by step (their lengths in proportion to the options' epochs: `pretrain_epochs`,
`patch_only_epochs`, `epochs - patch_only_epochs`; the paper's 20 / 20 / 20):

  "pretrain"     Appendix G: the generator's feature extractors and MSCA modules plus the 1x1
                 feature decoder, L1 to the VGG features of x_p (weighted sum over scales),
                 from two disjoint crop_size patches of load_size images.
  "patch"        Eq. 9 alone: x_p = G(c_p, x_q, c_q), p and q disjoint crop_size patches of the
                 load_size image (the paper's 256 of 512).
  "patch_global" Eq. 9 with late_crop_size crops resized to crop_size (384 -> 256), plus the
                 global self-reconstruction x = G(c, x, c) of Eq. 10 on the whole image
                 resized to crop_size, weighted by lambda_global (Eq. 11, lambda = 1).

Losses (Eq. 11 as SPADE implements it): hinge GAN, discriminator feature matching and VGG
perceptual loss for G; hinge loss for D. Adam(lr, betas) for G and D.

Determinism and exact resume: every random choice of a step (which scenes, crops, flips) is a
pure function of (seed, step, rank), and the data order of (seed, epoch); the checkpoint holds
models, optimisers, step, stage, the python/numpy/torch RNG states and the iterator position.
Resuming from step k therefore continues bit-for-bit as the uninterrupted run.

Multi-process: under torchrun (WORLD_SIZE > 1) each rank draws its own shard of every epoch's
permutation (DistributedSampler-style) and gradients are averaged with one all-reduce per
optimiser step, so all ranks hold identical parameters (tests/msca/test_train.py checks).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from msca.data.transforms import (exemplar_subcrop, patch_pair_task, random_hflip,
                                  resize_pair)
from msca.eval.class_presence import presence_mask
from msca.models import (Task, VGGWeightsWarning, build_decoder, build_discriminator,
                         build_generator, build_loss, total)
from msca.models.correspondence import correspondence_losses
from msca.options import Options

from .checkpoint import (TRAIN_FORMAT, atomic_save, export_model, read_checkpoint, rng_state,
                         set_rng_state)
from .run_guard import (RunFolderError, RunGuard, check_finite_losses, check_finite_weights,
                        check_resume, prepare_folder, read_log_records, remove_stale_tmp,
                        truncate_log)
from .config import TrainSettings
from .ema import ModelEMA

STAGES = ("pretrain", "patch", "patch_global")


def stage_bounds(opt: Options, steps: int) -> tuple[int, int]:
    """(end of pretraining, end of the patch-only stage) in steps."""
    late = max(opt.epochs - opt.patch_only_epochs, 0)
    parts = (max(opt.pretrain_epochs, 0), max(opt.patch_only_epochs, 0), late)
    whole = sum(parts) or 1
    a = round(steps * parts[0] / whole)
    b = round(steps * (parts[0] + parts[1]) / whole)
    return a, b


def build_dataset(opt: Options, settings: TrainSettings):
    """The training scenes (image (3,S,S) in [-1,1], label (S,S)) at load_size."""
    if opt.dataset == "procedural":
        from msca.data.procedural import NUM_CLASSES, ProceduralScenes
        if opt.num_classes < NUM_CLASSES:
            raise ValueError(f"num_classes: the procedural scenes have {NUM_CLASSES} classes, "
                             f"the options say {opt.num_classes}")
        return ProceduralScenes("train", opt.load_size, settings.train_scenes, seed=opt.seed)
    if opt.dataset == "folder":
        from msca.data.folder import LabelFolder
        if not opt.dataroot:
            raise ValueError("dataroot: the folder dataset needs dataroot (images/, labels/)")
        return LabelFolder(opt.dataroot, opt.load_size, opt.num_classes)
    if opt.dataset == "cocostuff":
        from msca.data.coco_stuff import CocoStuff
        if not opt.dataroot:
            raise ValueError("dataroot: the cocostuff dataset needs dataroot")
        return CocoStuff(opt.dataroot, "train", size=opt.load_size)
    raise ValueError(f"dataset: expected 'procedural', 'folder' or 'cocostuff', "
                     f"got {opt.dataset!r}")


class ShardedOrder:
    """Epoch-wise random order, sharded over ranks like DistributedSampler (each rank gets
    every world-th index of a permutation that depends only on (seed, epoch)); its whole state
    is (epoch, cursor), which the checkpoint stores."""

    def __init__(self, length: int, seed: int, rank: int = 0, world: int = 1):
        if length < world:
            raise ValueError(f"dataset: {length} items cannot be sharded over {world} ranks")
        self.length, self.seed, self.rank, self.world = length, seed, rank, world
        self.epoch, self.cursor = 0, 0
        self._shard = None

    def _make(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.length, generator=g)
        n = self.length // self.world * self.world  # equal shards, as drop_last
        self._shard = perm[:n][self.rank::self.world].tolist()

    def take(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self._shard is None:
                self._make()
            if self.cursor >= len(self._shard):
                self.epoch, self.cursor, self._shard = self.epoch + 1, 0, None
                continue
            out.append(self._shard[self.cursor])
            self.cursor += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self._shard = int(state["epoch"]), int(state["cursor"]), None


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int]:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return _dist_info()


def _weighted_mean(err: torch.Tensor, weights) -> torch.Tensor:
    """Mean of err (B,C,H,W) with per-pixel weights (B,1,H,W) or None (a plain mean); the
    weights are not renormalised, so a weight above 1 adds loss where it applies."""
    return err.mean() if weights is None else (err * weights).mean()


class Trainer:
    """Owns the models, optimisers, data order and the optimisation step.

        t = Trainer(opt, settings, out_dir)      # fresh, or
        t = Trainer(opt, settings, out_dir, resume=True)   # from out_dir/checkpoint.pt
        t.train()                                # until settings.steps
    """

    def __init__(self, opt: Options, settings: TrainSettings, out_dir: str, *,
                 resume: bool = False, force: bool = False, device=None, progress: bool = True):
        self.opt, self.settings, self.out_dir = opt, settings, out_dir
        self.rank, self.world = _dist_info()
        if device is None:
            device = (torch.device("cuda", torch.cuda.current_device())
                      if torch.cuda.is_available() else torch.device("cpu"))
        self.device = torch.device(device)
        self.progress = progress and self.rank == 0
        self.checkpoint_path = os.path.join(out_dir, "checkpoint.pt")
        self.log_path = os.path.join(out_dir, "log.jsonl")
        # One trainer per run folder (run_guard.py): refused while another trainer holds the
        # folder's lock (train() takes it), and a folder holding another run unless resume or
        # force. force also resumes with changed options.
        self.force = force
        self.guard = RunGuard(out_dir) if self.rank == 0 else None
        with self._all_ranks_agree("the run folder check"):
            if self.guard is not None:
                self.guard.check_free()
                prepare_folder(out_dir, resume=resume, force=force)

        _seed_everything(opt.seed)
        with warnings.catch_warnings():
            if self.rank != 0:  # one warning about random VGG weights is enough
                warnings.simplefilter("ignore", VGGWeightsWarning)
            self.G = build_generator(opt).to(self.device)
        self.D = build_discriminator(opt).to(self.device)
        self.decoder = build_decoder(opt).to(self.device)
        self.loss = build_loss(opt, self.G.vgg)
        betas = (opt.beta1, opt.beta2)
        self.opt_pre = torch.optim.Adam(list(self.G.parameters()) +
                                        list(self.decoder.parameters()), lr=opt.lr, betas=betas)
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=opt.lr, betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=opt.lr, betas=betas)
        # An exponential moving average of G's weights (settings.ema_decay > 0): what the
        # exported model ships, as averaged GAN generators are steadier than the last step.
        self.ema = ModelEMA(self.G, settings.ema_decay) if settings.ema_decay > 0 else None
        self.dataset = build_dataset(opt, settings)
        self.order = ShardedOrder(len(self.dataset), opt.seed, self.rank, self.world)
        self.step = 0
        self.pretrain_end, self.patch_end = stage_bounds(opt, settings.steps)
        self.last_losses: dict = {}
        if self.world > 1:
            self._broadcast_parameters()
        if resume:
            if not os.path.isfile(self.checkpoint_path):
                raise FileNotFoundError(f"--resume: no checkpoint at {self.checkpoint_path!r}")
            self.load(self.checkpoint_path)

    @contextmanager
    def _all_ranks_agree(self, what: str):
        """Run rank 0's part of a folder check, then tell every rank whether it passed: the
        lock and the folder belong to rank 0, but a refusal must stop all ranks (the others
        would otherwise wait forever in their first collective). Rank 0 raises its own error;
        the other ranks raise a RunFolderError that points to it."""
        failure = None
        try:
            yield
        except BaseException as e:  # re-raised below, after the other ranks know
            failure = e
        if self.world > 1:
            flag = torch.tensor([1 if failure is not None else 0], dtype=torch.int32,
                                device=self.device if dist.get_backend() == "nccl" else "cpu")
            dist.broadcast(flag, 0)
            if failure is None and int(flag.item()) != 0:
                raise RunFolderError(f"{self.out_dir}: rank 0 stopped at {what} (its message "
                                     f"says why); rank {self.rank} stops too")
        if failure is not None:
            raise failure

    # ---------------------------------------------------------------- schedule
    def stage_at(self, step: int) -> str:
        if step < self.pretrain_end:
            return "pretrain"
        return "patch" if step < self.patch_end else "patch_global"

    @property
    def stage(self) -> str:
        return self.stage_at(self.step)

    def global_task_on(self, stage: str) -> bool:
        """Whether a step of `stage` runs the global task and the enlarged crops: the last
        stage, unless lambda_global = 0 (the "w/o global" ablation drops both)."""
        return stage == "patch_global" and self.opt.lambda_global > 0

    def lr_at(self, step: int) -> float:
        """opt.lr, decayed linearly towards 0 over the last stage when settings.lr_decay
        (SPADE's schedule for its second half); a pure function of the step, so a resumed run
        continues the same schedule."""
        lr = self.opt.lr
        if self.settings.lr_decay and self.stage_at(step) == "patch_global":
            span = max(self.settings.steps - self.patch_end, 1)
            lr *= max(0.0, 1.0 - (step - self.patch_end) / span)
        return lr

    def _set_lr(self, stage: str) -> None:
        lr = self.lr_at(self.step)
        for o in (self.opt_G, self.opt_D) if stage != "pretrain" else (self.opt_pre,):
            for g in o.param_groups:
                g["lr"] = lr

    # ---------------------------------------------------------------- data
    def _batch(self, step: int, stage: str) -> dict:
        """One step's tensors. Randomness from (seed, step, rank) only (see module doc)."""
        opt = self.opt
        rng = np.random.default_rng([opt.seed, step, self.rank])
        idx = self.order.take(opt.batch_size)
        late = self.global_task_on(stage)
        patch = opt.late_crop_size if late else opt.crop_size
        fields = {k: [] for k in ("image_p", "label_p", "image_q", "label_q", "image", "label",
                                  "image_ex", "label_ex")}
        for i in idx:
            item = self.dataset[i]
            image, label = item["image"], item["label"]
            if image.shape[-1] != opt.load_size or image.shape[-2] != opt.load_size:
                image, label = resize_pair(image, label, opt.load_size)
            t = patch_pair_task(rng, image, label, min(patch, opt.load_size),
                                out_size=opt.crop_size, flip=opt.flip,
                                allow_overlap=2 * patch > opt.load_size)
            if opt.exemplar_subcrop > 0 and rng.random() < opt.exemplar_subcrop:
                t["image_q"], t["label_q"] = exemplar_subcrop(rng, t["image_q"], t["label_q"])
            for k in ("image_p", "label_p", "image_q", "label_q"):
                fields[k].append(t[k])
            if late:  # the global image, at the generator's working size
                g_img, g_lab = resize_pair(image, label, opt.crop_size)
                if opt.flip:
                    g_img, g_lab = random_hflip(rng, g_img, g_lab)
                fields["image"].append(g_img)
                fields["label"].append(g_lab)
                if opt.global_exemplar_flip > 0:  # the global task's exemplar: x or flip(x)
                    flip = rng.random() < opt.global_exemplar_flip
                    fields["image_ex"].append(g_img.flip(-1) if flip else g_img)
                    fields["label_ex"].append(g_lab.flip(-1) if flip else g_lab)
        out = {k: torch.stack(v).to(self.device) for k, v in fields.items() if v}
        if self.settings.bf16:
            # Under autocast the generator's 1x1 compression yields bf16 Fx2 while its label
            # embeddings follow the exemplar's dtype; bf16 images keep the two consistent
            # (the MSCA op wants one dtype).
            out = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                   for k, v in out.items()}
        return out

    # ---------------------------------------------------------------- the step
    def _autocast(self):
        if not self.settings.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _all_reduce_grads(self, params) -> None:
        """Average gradients over ranks: one flat all-reduce (params whose grad is None are
        the same on every rank, since every rank runs the same graph)."""
        if self.world == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def _broadcast_parameters(self) -> None:
        for m in (self.G, self.D, self.decoder):
            for t in list(m.parameters()) + list(m.buffers()):
                dist.broadcast(t.data, 0)

    def _optimise(self, optimiser, loss, params) -> None:
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        params = list(params)
        self._all_reduce_grads(params)
        if self.settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip)
        optimiser.step()

    def _pretrain_step(self, b: dict) -> dict:
        with self._autocast():
            feats = self.G.extract_features(b["label_p"], b["image_q"], b["label_q"])
            fx1 = self.G.align(feats)
            pred = self.decoder(fx1, feats.fc1)
            targets = self.G.vgg_features(b["image_p"])
            loss, per_scale = self.decoder.loss([p.float() for p in pred],
                                                [t.float() for t in targets],
                                                return_per_scale=True)
            corr = correspondence_losses(self.G, feats, b["image_q"], b["image_p"],
                                         lambda_label=self.opt.lambda_corr_label,
                                         lambda_rgb=self.opt.lambda_corr_rgb)
            loss = loss + sum(corr.values()) if corr else loss
        params = list(self.G.parameters()) + list(self.decoder.parameters())
        self._optimise(self.opt_pre, loss, params)
        out = {"pre/total": loss.detach()}
        out.update({f"pre/{k}": v.detach() for k, v in corr.items()})
        out.update({f"pre/s{i}": v.detach() for i, v in enumerate(per_scale)})
        return out

    def _tasks(self, b: dict, late: bool):
        """(conditioning, real) per task: cross (Eq. 9) and, late, global (Eq. 10)."""
        tasks = {"cross": ((b["label_p"], b["image_q"], b["label_q"]), b["image_p"])}
        if late:
            ex, ex_label = b.get("image_ex", b["image"]), b.get("label_ex", b["label"])
            tasks["global"] = ((b["label"], ex, ex_label), b["image"])
        return tasks

    def _pixel_weights(self, label: torch.Tensor, exemplar_label: torch.Tensor):
        """(B,1,H,W) weights of the pixel losses: absent_class_weight where the target's
        class does not occur in the exemplar's label map, 1 elsewhere; None when the weight
        is 1 (plain means, as before the setting existed)."""
        aw = self.settings.absent_class_weight
        if aw == 1.0:
            return None
        # the same split that msca demo / msca evaluate report PSNR on
        _, absent = presence_mask(label, exemplar_label, self.opt.ignore_label)
        return (1.0 + (aw - 1.0) * absent.float()).unsqueeze(1)

    def _gan_step(self, b: dict, late: bool) -> dict:
        tasks = self._tasks(b, late)
        update_g = self.step % self.opt.g_update_every == 0
        fakes = {}
        losses = {}
        # --- generator: D frozen (no gradient into D's parameters from G's loss)
        self.D.requires_grad_(False)
        with torch.set_grad_enabled(update_g), self._autocast():
            g_tasks = {}
            klds = {}
            corr_terms = {}
            corr_w = self.opt.corr_gan_factor
            for name, ((c, x2, c2), real) in tasks.items():
                if update_g and corr_w > 0 and hasattr(self.G, "forward_with_features"):
                    fake, feats = self.G.forward_with_features(c, x2, c2)
                    w = corr_w * (1.0 if name == "cross" else self.opt.lambda_global)
                    for k, v in correspondence_losses(
                            self.G, feats, x2, real, lambda_label=self.opt.lambda_corr_label,
                            lambda_rgb=self.opt.lambda_corr_rgb).items():
                        corr_terms[f"{name}/{k}"] = w * v
                else:
                    fake = self.G(c, x2, c2)
                fakes[name] = fake
                if getattr(self.G, "last_kld", None) is not None:  # the spade_vae baseline
                    klds[name] = self.G.last_kld
                if update_g:
                    pred_fake = self.D(fake, c, x2, c2)
                    with torch.no_grad():
                        pred_real = self.D(real, c, x2, c2)
                    g_tasks[name] = Task(pred_fake, pred_real, fake.float(), real.float())
            if update_g:
                g_losses = self.loss.generator(cross=g_tasks.get("cross"),
                                               global_=g_tasks.get("global"))
                for name, kld in klds.items():  # SPADE's KLD term, task-weighted like the rest
                    w = 1.0 if name == "cross" else self.opt.lambda_global
                    g_losses[f"{name}/kld"] = w * self.opt.lambda_kld * kld
                for name, t in g_tasks.items():
                    w = 1.0 if name == "cross" else self.opt.lambda_global
                    (c, _, c2), _ = tasks[name]
                    pix = self._pixel_weights(c, c2)
                    if self.settings.lambda_l1 > 0:
                        g_losses[f"{name}/l1"] = (w * self.settings.lambda_l1 *
                                                  _weighted_mean((t.fake - t.real).abs(), pix))
                    if self.settings.lambda_mse > 0:
                        g_losses[f"{name}/mse"] = (w * self.settings.lambda_mse *
                                                   _weighted_mean((t.fake - t.real) ** 2, pix))
                g_losses.update(corr_terms)
                g_total = total(g_losses)
        if update_g:
            self._optimise(self.opt_G, g_total, self.G.parameters())
            if self.ema is not None:
                self.ema.update(self.G)
            losses.update({k: v.detach() for k, v in g_losses.items()})
            losses["G/total"] = g_total.detach()
        self.D.requires_grad_(True)
        # --- discriminator on the detached fakes
        with self._autocast():
            d_tasks = {}
            for name, ((c, x2, c2), real) in tasks.items():
                both = self.D(torch.cat([fakes[name].detach(), real]), torch.cat([c, c]),
                              torch.cat([x2, x2]), torch.cat([c2, c2]))
                n = real.shape[0]
                pred_fake = [[t[:n] for t in scale] for scale in both]
                pred_real = [[t[n:] for t in scale] for scale in both]
                d_tasks[name] = Task(pred_fake, pred_real, None, None)
            d_losses = self.loss.discriminator(cross=d_tasks.get("cross"),
                                               global_=d_tasks.get("global"))
            d_total = total(d_losses)
        self._optimise(self.opt_D, d_total, self.D.parameters())
        losses.update({k: v.detach() for k, v in d_losses.items()})
        losses["D/total"] = d_total.detach()
        return losses

    def train_step(self) -> dict:
        """One optimisation step at self.step; returns the losses (floats)."""
        stage = self.stage
        self._set_lr(stage)
        self.G.train()
        self.D.train()
        b = self._batch(self.step, stage)
        if stage == "pretrain" and hasattr(self.G, "align"):
            losses = self._pretrain_step(b)
        elif stage == "pretrain":
            # The spade_vae baseline has no MSCA to pretrain (Appendix G): its first stage is
            # the patch cross-reconstruction task on the same batches, so it trains the same
            # number of steps as the models it is compared with.
            losses = self._gan_step(b, late=False)
        else:
            losses = self._gan_step(b, late=self.global_task_on(stage))
        self.step += 1
        self.last_losses = {k: float(v) for k, v in losses.items()}
        return self.last_losses

    # ---------------------------------------------------------------- loop
    def train(self, steps: int | None = None) -> dict:
        """Run until `steps` (default settings.steps); checkpoint every checkpoint_every steps
        and at the end. Returns the last losses."""
        end = self.settings.steps if steps is None else steps
        with self._all_ranks_agree("taking the run folder's lock"):
            if self.guard is not None:
                self.guard.acquire()  # released below; refused while another trainer holds it
                remove_stale_tmp(self.out_dir)
        bar = None
        if self.progress and self.step < end:
            from tqdm import tqdm
            bar = tqdm(total=end, initial=self.step, unit="it", dynamic_ncols=True,
                       desc="train")
        t0 = time.time()
        try:
            while self.step < end:
                losses = self.train_step()
                # stop before a NaN reaches a checkpoint: the last good one stays
                check_finite_losses(losses, self.step, self.checkpoint_path)
                if self.rank == 0 and (self.step % self.settings.log_every == 0
                                       or self.step == end):
                    self._log(losses, time.time() - t0)
                if self.step % self.settings.checkpoint_every == 0 or self.step == end:
                    self.save()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(self._short(losses), refresh=False)
        finally:
            if bar is not None:
                bar.close()
            if self.guard is not None:
                self.guard.release()
        return self.last_losses

    @staticmethod
    def _short(losses: dict) -> str:
        keys = [k for k in ("pre/total", "G/total", "D/total", "cross/l1", "cross/vgg")
                if k in losses]
        return " ".join(f"{k.split('/')[0] if k.endswith('total') else k}={losses[k]:.3f}"
                        for k in keys)

    def _log(self, losses: dict, elapsed: float) -> None:
        os.makedirs(self.out_dir, exist_ok=True)
        rec = {"step": self.step, "stage": self.stage_at(self.step - 1),
               "elapsed_s": round(elapsed, 2), **{k: round(v, 6) for k, v in losses.items()}}
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "format": TRAIN_FORMAT,
            "options": self.opt.to_dict(),
            "train": self.settings.to_dict(),
            "step": self.step,
            "stage": self.stage,
            "world_size": self.world,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "decoder": self.decoder.state_dict(),
            "G_ema": self.ema.state_dict() if self.ema is not None else None,
            "opt_pre": self.opt_pre.state_dict(),
            "opt_G": self.opt_G.state_dict(),
            "opt_D": self.opt_D.state_dict(),
            "rng": rng_state(),  # tensors and plain lists: loads with weights_only=True
            "data": self.order.state_dict(),
            "last_losses": self.last_losses,
        }

    def save(self, path: str | None = None) -> None:
        """Rank 0 writes atomically; the others wait so nobody runs ahead of a checkpoint."""
        if self.rank == 0:
            check_finite_weights({"G": self.G, "D": self.D, "decoder": self.decoder}, self.step,
                                 path or self.checkpoint_path)
            atomic_save(self.state_dict(), path or self.checkpoint_path)
        if self.world > 1:
            dist.barrier()

    def load(self, path: str) -> None:
        ckpt = read_checkpoint(path)
        if ckpt["format"] != TRAIN_FORMAT:
            raise ValueError(f"checkpoint {path!r}: an exported model, not a training "
                             "checkpoint; cannot resume from it")
        if ckpt.get("world_size", 1) != self.world:
            raise ValueError(f"checkpoint {path!r}: written by {ckpt.get('world_size')} "
                             f"process(es), resuming with {self.world}: the data shards differ")
        check_resume(path, ckpt, self.opt.to_dict(), self.settings.to_dict(), force=self.force)
        self.G.load_state_dict(ckpt["G"])
        self.D.load_state_dict(ckpt["D"])
        self.decoder.load_state_dict(ckpt["decoder"])
        if self.ema is not None:
            if ckpt.get("G_ema") is None:
                raise ValueError(f"checkpoint {path!r}: has no EMA weights but ema_decay > 0")
            self.ema.load_state_dict(ckpt["G_ema"])
        self.opt_pre.load_state_dict(ckpt["opt_pre"])
        self.opt_G.load_state_dict(ckpt["opt_G"])
        self.opt_D.load_state_dict(ckpt["opt_D"])
        set_rng_state(ckpt["rng"])
        self.order.load_state_dict(ckpt["data"])
        self.step = int(ckpt["step"])
        self.last_losses = dict(ckpt.get("last_losses", {}))
        if self.rank == 0 and os.path.isfile(self.log_path):
            # Steps after the checkpoint were lost with the crash and will be redone: drop
            # their log records so the log reads like one uninterrupted run (and a torn
            # last line, a crash mid-write).
            truncate_log(self.log_path, self.step)

    def export(self, path: str) -> None:
        """The shippable inference checkpoint (options + generator), e.g. checkpoints/demo.pt."""
        if self.rank == 0:
            export_model(self.state_dict(), path)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def read_log(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training log {path!r}: no such file")
    return read_log_records(path)  # a torn last line is dropped with a warning


def steps_per_second(records: list[dict]) -> float:
    if len(records) < 2:
        return math.nan
    a, b = records[0], records[-1]
    return (b["step"] - a["step"]) / max(b["elapsed_s"] - a["elapsed_s"], 1e-9)
