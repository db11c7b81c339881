"""Training stages.

M0 is pretrained here on a task's behaviour (cases with and without C, answers from the task's
teacher). Stage B fine-tunes a copy of M0 on token sequences whose loss covers only their
target tokens (the explanations), plus lambda * KL(current || M0) on the answer distribution of task
prompts, plus, optionally, a concurrent behaviour-shift objective. Stage B is generic: it never needs
to know what the sequences say; explain.py builds them, eval.py runs one run, experiments.py the suites.

Every step's batch is drawn from a generator seeded by (seed, step), so a run resumed from a checkpoint
sees exactly the batches an uninterrupted run would have seen. Each stage's settings are a dataclass
whose fields are the command line's flags; its science settings (all but device, threads, checkpoint
interval) are a run's identity, so M0 is saved once per variant (m0_path) and resumes on another device.

Pretrain M0 from the command line:  python train.py --task hint --seed 0
"""
import errno
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import tiktoken
import torch
import torch.nn.functional as F

from config import (SEED_MAX, Parser, UserError, add_config_flags, check_positive, check_ranges,
                    check_writable, config_from_flags, from_dict, option, run_command, science)
from data import N_UNITS, TASKS, TOKENIZER, get_task, rng, token_id, tokenizer_fingerprint, unit_token_ids
from features import MAX_WORDS, TriggerTask
from model import DEVICES, GPT, GPTConfig, pick_device, processors

BLOCK_SIZE = 48  # a guard only (rotary positions need no table): every prompt with its explanation fits
REPO = os.path.dirname(os.path.abspath(__file__))
RUNS_DIR = os.path.join(REPO, "runs")  # the user's one ignored folder: checkpoints and their own results
LOG_EVERY = 100  # pretraining prints a progress line every LOG_EVERY steps and at the last step


# ---------------------------------------------------------------------------------------------------------
# Reproducible set-up and safe files

def setup(seed, threads, device="auto"):
    """Fix the seed and the thread count (CPU results depend on it) and pick the device."""
    check_positive("threads", threads)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return pick_device(device)


# Writes that fail for want of room or of a writable disk: the user's to fix (the fix, by errno), not a bug.
WRITE_FIXES = {errno.ENOSPC: "free some space there", errno.EDQUOT: "free some of your quota there",
               errno.EROFS: "make it writable"}


def atomic_write(path, payload: bytes):
    """Write `payload` to `path` through a temporary file in the same folder, then rename it: a killed
    process never leaves half a file, and readers see the old file or the new one. On a full disk or
    quota, or a read-only filesystem, the temporary file is removed and a UserError names the file, its
    folder and the bytes it needed, so that a rerun, once there is room, resumes from what was saved."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno in WRITE_FIXES:
            raise UserError(f"could not write {os.path.basename(path)} ({len(payload):,} bytes) in {folder}: "
                            f"{err.strerror}; {WRITE_FIXES[err.errno]} and run the command again (it resumes "
                            f"from the files already saved)") from None
        raise


def save_checkpoint(path, model, optimizer, config, step, **extra):
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
            "model_config": asdict(model.cfg), "config": config, "step": step,
            "tokenizer": tokenizer_fingerprint(), **extra}
    serialised = io.BytesIO()  # in memory first, so that a full disk fails in atomic_write, not inside torch
    torch.save(ckpt, serialised)
    atomic_write(path, serialised.getvalue())


def load_checkpoint(path, device="cpu"):
    """Read a checkpoint, refusing one that is missing, unreadable or made with another tokenizer."""
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} does not exist; pretrain it first (python train.py)")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:
        raise UserError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}); delete it "
                         f"and train again") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "tokenizer" not in ckpt:
        raise UserError(f"checkpoint {path} is not a checkpoint of this project")
    if ckpt["tokenizer"] != tokenizer_fingerprint():
        raise UserError(f"checkpoint {path} was made with tokenizer {ckpt['tokenizer']}, but this code's "
                         f"tokenizer is {tokenizer_fingerprint()}; retrain it")
    return ckpt


CODE = ("*.py", "requirements.txt", "Makefile")  # what git_dirty checks (not results, reports, figures)


def provenance():
    """What a result needs beside it to be reproduced: versions, commit, whether the code had
    uncommitted changes, the machine and the runtime settings' effect (threads)."""
    git = lambda *args: subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout.strip()
    try:
        commit, dirty = git("rev-parse", "HEAD") or "unknown", bool(git("status", "--porcelain",
                                                                         "--untracked-files=no", "--", *CODE))
    except OSError:
        commit, dirty = "unknown", False
    return {"git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "tiktoken": tiktoken.__version__,
            "platform": platform.platform(), "threads": torch.get_num_threads(), **processors()}


def _nan_to_none(obj):
    """Strict JSON has no NaN: an undefined metric (e.g. Self@flipped with nothing flipped) is null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def write_json(obj, path):
    atomic_write(path, json.dumps(_nan_to_none(obj), indent=1, allow_nan=False).encode())


# ---------------------------------------------------------------------------------------------------------
# Shared by both stages: the learning-rate schedule, the optimizer, one step, the finite-loss check

def lr_at(step, cfg):
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def new_optimizer(model, lr, weight_decay=0.0):
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay, fused=True)


def take_step(model, optimizer, loss, lr, grad_clip=None, but_units=None):
    """One optimizer step at learning rate lr. but_units: (another loss, token ids): its
    gradient is added too, but not on those tokens' embedding rows."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    if but_units is not None:
        other, rows = but_units
        hook = model.tok_emb.weight.register_hook(lambda grad: grad.index_fill(0, rows, 0.0))
        other.backward()
        hook.remove()
    if torch.is_tensor(loss) and loss.requires_grad:
        loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def check_finite(loss, step, stage, lower):
    """Stop at the first nan or infinite loss (every later step would be wasted), saying what to lower."""
    if not torch.isfinite(loss):
        raise UserError(f"{stage}: the loss became {loss.item()} at step {step}; lower {lower}")


# ---------------------------------------------------------------------------------------------------------
# M0: pretrained on a task's behaviour

@dataclass
class PretrainConfig:
    task: str = option("hint", "the task M0 learns", choices=TASKS)
    seed: int = option(0, "initialisation and batches", 0, SEED_MAX)
    world_seed: int = option(-1, "the task's world (its facts); -1: the same as seed", -1, SEED_MAX)
    world_variation: float = option(0.0, "fraction of units whose facts differ from that world (how another "
                                         "model family's world is made)", 0.0, 1.0)
    feature_words: int = option(0, "nonsense words with effects of their own that M0 learns beside the task's C "
                                   "(set by a run's explained_features and unlabelled_features)", 0, MAX_WORDS)
    steps: int = option(600, "pretraining steps", 1, 100_000)
    batch_size: int = option(128, "cases per step", 1, 4096)
    lr: float = option(5e-3, "peak learning rate", 1e-6, 1.0)
    warmup: int = option(50, "steps of linear warm-up before the cosine decay", 0, 100_000)
    n_layer: int = option(2, "transformer blocks", 1, 12)
    n_head: int = option(4, "attention heads per block (n_embd / n_head must be even: rotary)", 1, 32)
    n_embd: int = option(64, "width of the residual stream", 2, 1024)
    threads: int = option(1, "CPU threads; one per run, and a suite runs one run per core", 1, 256, runtime=True)
    device: str = option("auto", "where to train", choices=DEVICES, runtime=True)
    checkpoint_every: int = option(200, "steps between checkpoints a killed run resumes from", 1, 100_000,
                                   runtime=True)

    def __post_init__(self):
        check_ranges(self)
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise UserError(f"n_embd={self.n_embd} must be n_head={self.n_head} times an even head dimension "
                             f"(rotary embeddings rotate pairs)")


def behaviour_task(cfg: PretrainConfig):
    """The behaviour M0 learns: the task, and its feature_words on top if any (features.TriggerTask)."""
    task = get_task(cfg.task)  # the words' effects depend on their number only: which are labelled is the run's
    return TriggerTask(task, cfg.feature_words) if cfg.feature_words else task


def task_world(task, cfg: PretrainConfig):
    """The world M0 learns: the task's world for world_seed (by default the seed), with the facts of a
    fraction world_variation of its units changed by the task's broadest shift."""
    seed = cfg.seed if cfg.world_seed < 0 else cfg.world_seed
    world = task.split(seed).world
    if cfg.world_variation:
        direction = "both" if "both" in task.shift_directions else task.shift_directions[0]
        world, _ = task.shift(world, rng(seed, "world_variation"), np.arange(N_UNITS), cfg.world_variation,
                              direction)
    return world


@torch.no_grad()
def behaviour_accuracy(model, task, world, cases):
    """Fraction of cases where the model's answer equals the teacher's answer in `world` (nan if none)."""
    if not cases:
        return float("nan")
    answers = case_logprobs(model, task, cases).argmax(-1).numpy()
    return float(np.mean(answers == np.array([task.teacher(world, c) for c in cases])))


@torch.no_grad()
def case_logprobs(model, task, cases, batch_size=512):
    """The model's answer-set log-probabilities for each case, batched: a CPU tensor [N, n_answers].
    Batches of 512 measured 8% faster than 1024 on one CPU thread, with the same numbers."""
    out = [model.answer_logprobs([task.encode(c) for c in cases[i: i + batch_size]], task.answer_ids).cpu()
           for i in range(0, len(cases), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, len(task.answers))


def probe_cases(task, seed, n=2000):
    """Fixed cases for reporting M0's accuracy: n with C and the same n with C removed."""
    draws = rng(seed, "probe_cases")
    with_c = []
    while len(with_c) < n:
        case = task.random_case(draws, np.arange(N_UNITS))
        if case[-1] >= 0:
            with_c.append(case)
    return with_c, [task.without_feature(c) for c in with_c]


def new_model(cfg: PretrainConfig, device):
    return GPT(GPTConfig(vocab_size=TOKENIZER.n_vocab, block_size=BLOCK_SIZE, n_layer=cfg.n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd)).to(device)


def pretrain_loss(model, task, world, cfg: PretrainConfig, step):
    """The loss on pretraining step `step`'s batch: the teacher's answer after each prompt."""
    draws = rng(cfg.seed, "pretrain_batches", step)
    cases = [task.random_case(draws, np.arange(N_UNITS)) for _ in range(cfg.batch_size)]
    answers = torch.tensor([task.teacher(world, c) for c in cases], device=model.device)
    return F.nll_loss(model.answer_logprobs([task.encode(c) for c in cases], task.answer_ids), answers)


def m0_path(cfg: PretrainConfig, runs_dir=None):
    """Where M0 of these settings is saved: one checkpoint per variant (named by a digest of its science
    settings), so a variant and the default model of the same seed never overwrite each
    other; and one per thread count, as another count rounds differently (a new draw, suites.draw)."""
    digest = hashlib.sha1(json.dumps(science(cfg), sort_keys=True).encode()).hexdigest()[:8]
    threads = "" if cfg.threads == 1 else f"_threads{cfg.threads}"
    return os.path.join(runs_dir or RUNS_DIR, "checkpoints", cfg.task, f"seed{cfg.seed}", f"m0_{digest}{threads}.pt")


def resume(path, cfg: PretrainConfig, model, optimizer, device):
    """Load a pretraining checkpoint of these very science settings (runtime ones may differ) into model
    and optimizer; returns (its step, seconds spent so far, its report if it is finished)."""
    ckpt = load_checkpoint(path, device)
    try:  # exactly this code's M0 fields: a final explainer's or another code's checkpoint is refused
        saved = science(from_dict(PretrainConfig, ckpt["config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"checkpoint {path} is not a pretraining checkpoint of M0 ({err}); choose another path") from None
    differ = [f"{name} {saved[name]!r} there, {value!r} here" for name, value in science(cfg).items()
              if saved[name] != value]
    if differ:
        raise UserError(f"checkpoint {path} was made with another config ({', '.join(differ)}); delete "
                        f"it or choose another output path")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt["step"], ckpt["seconds"], ckpt.get("report")


def pretrain(cfg: PretrainConfig, path, log=print):
    """Train M0 (or resume it from `path`); returns (model, report dict). Checkpoints atomically every
    checkpoint_every steps; logs a progress line every LOG_EVERY steps and at the end."""
    device = setup(cfg.seed, cfg.threads, cfg.device)
    task = behaviour_task(cfg)
    world = task_world(get_task(cfg.task), cfg)
    model = new_model(cfg, device)
    optimizer = new_optimizer(model, cfg.lr)
    start, elapsed, report = resume(path, cfg, model, optimizer, device) if os.path.exists(path) else (0, 0.0, None)
    if report:
        return model, report
    if start:
        log(f"resuming {path} at step {start}")
    t0, lower = time.time(), f"the learning rate (now {cfg.lr})"
    model.train()
    for step in range(start, cfg.steps):
        loss, lr = pretrain_loss(model, task, world, cfg, step), lr_at(step, cfg)
        check_finite(loss, step, "pretraining", lower)
        take_step(model, optimizer, loss, lr)
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_checkpoint(path, model, optimizer, asdict(cfg), step + 1, seconds=elapsed + time.time() - t0)
        if (step + 1) % LOG_EVERY == 0 or step + 1 == cfg.steps:
            log(f"pretraining step {step + 1}/{cfg.steps}: loss {loss.item():.4f}, lr {lr:.2e}, "
                f"{elapsed + time.time() - t0:.1f} s")
    model.eval()
    with_c, without_c = probe_cases(task, cfg.seed)
    report = {"accuracy_with_c": behaviour_accuracy(model, task, world, with_c),
              "accuracy_without_c": behaviour_accuracy(model, task, world, without_c),
              "seconds": round(elapsed + time.time() - t0, 2), "n_params": model.n_params()}
    save_checkpoint(path, model, optimizer, asdict(cfg), cfg.steps, report=report, seconds=report["seconds"])
    return model, report


# ---------------------------------------------------------------------------------------------------------
# Stage B: explanation training with a KL regulariser and an optional concurrent shift

SHIFT_IN = ("all", "units", "layers", "word")


@dataclass
class ExplainConfig:
    # 450 with n_explain 900: chosen on fresh seeds 200-209 by the README's rule (EXPLORATION.md)
    steps: int = option(450, "explanation training steps", 1, 100_000)
    # chosen on fresh seeds 30-34 against 3e-3 (EXPLORATION.md)
    lr: float = option(5e-3, "peak learning rate", 1e-6, 1.0)
    explain_batch: int = option(128, "explanation sequences per step", 1, 4096)
    shift_batch: int = option(128, "shift cases per step", 1, 4096)
    kl_batch: int = option(64, "KL prompts per step", 1, 4096)
    # 10 with explain_in "layers": chosen on fresh seeds 200-209 by the README's rule (EXPLORATION.md)
    kl_weight: float = option(10.0, "weight of KL(current || M0) on the KL prompts' answers (0: no KL term)",
                              0.0, 1000.0)
    warmup: int = option(30, "steps of linear warm-up before the cosine decay", 0, 100_000)
    grad_clip: float = option(1.0, "largest gradient norm (0: no clipping)", 0.0, 1000.0)
    eval_every: int = option(50, "steps between evaluations", 1, 100_000)
    lora_rank: int = option(0, "0: full fine-tuning; r > 0: only rank-r adapters and the embedding train "
                               "(at most the model width)", 0, 1024)
    weight_decay: float = option(0.1, "AdamW's weight decay, on every trained weight", 0.0, 10.0)  # EXPLORATION.md
    # EXPLORATION.md, "Where coupling runs"
    shift_in: str = option("all", "where the concurrent shift may be written: all weights; units: only the unit "
                                  "words' embeddings; layers: those stay at M0's values under every loss, so the "
                                  "shift lives in the layers; word (shift=trigger): only the held-out word's row",
                           choices=SHIFT_IN)
    dropout: float = option(0.0, "dropout in the explainer's blocks while it trains (M0 trains without)", 0.0, 0.9)
    explain_in: str = option("layers", "where the explanation objective may write: all weights; layers: every weight "
                                    "but the unit words' embeddings, so it cannot store a label per unit and must "
                                    "read what the units hold", choices=("all", "layers"))

    def __post_init__(self):
        check_ranges(self)


def explainer_from(m0, lora_rank=0, dropout=0.0):
    """The model stage B trains: a trainable copy of M0 (rank 0), or M0 with its transformer weights frozen
    and rank-r LoRA adapters (starting as the identity update) on every attention and MLP projection. The
    tied token embedding stays trainable: the explanation words' embeddings are as untrained as new tokens."""
    model = GPT(replace(m0.cfg, lora_rank=lora_rank, dropout=dropout)).to(m0.device)
    missing, unexpected = model.load_state_dict(m0.state_dict(), strict=False)
    assert not unexpected and all("lora_" in key for key in missing), (missing, unexpected)
    for name, p in model.named_parameters():
        p.requires_grad = not lora_rank or "lora_" in name or name == "tok_emb.weight"
    return model.eval()


def kl_to_reference(logp, ref_logp):
    """Mean over prompts of KL(current || reference) between answer distributions."""
    return (logp.exp() * (logp - ref_logp)).sum(-1).mean()


def explanation_loss(model, sequences):
    """Mean cross-entropy on the target tokens of (prompt ids, target ids) sequences; the prompt is
    context only. Outputs are computed only at the positions that predict a target token."""
    idx, _ = model.pad([prompt + target for prompt, target in sequences])
    width = max(len(target) for _, target in sequences)
    at = np.zeros((len(sequences), width), dtype=np.int64)
    targets = np.full((len(sequences), width), -1)
    for row, (prompt, target) in enumerate(sequences):  # the output at t predicts the token at t + 1
        at[row] = len(prompt) - 1 + np.minimum(np.arange(width), len(target) - 1)
        targets[row, : len(target)] = target
    logits = model.head(model.hidden(idx, torch.from_numpy(at).to(model.device)))
    return F.cross_entropy(logits.flatten(0, 1).float(), torch.from_numpy(targets.ravel()).to(model.device),
                           ignore_index=-1)


def gradient_on_rows(loss, weight, rows):
    """A stand-in for `loss` whose gradient is loss's gradient on weight[rows] and zero everywhere else
    (its value is not the loss's): how the shift reaches only the unit embeddings or the held-out word's."""
    (grad,) = torch.autograd.grad(loss, weight, retain_graph=True)
    return (grad[rows] * weight[rows]).sum()


def active_phase(starts, step):
    """The index of the phase in force at `step` (the last one started), given their start steps
    sorted, or None before the first."""
    started = [i for i, start in enumerate(starts) if start <= step]
    return started[-1] if started else None


def train_explainer(model, cfg: ExplainConfig, seed, explain_data, shift_phases, kl_data, answer_ids,
                    on_eval=None):
    """Stage B. explain_data: (prompt_ids, target_ids) pairs, loss on the targets only.
    shift_phases: the concurrent shift's schedule, [(start_step, shift_data)] sorted by step, where
    shift_data are (prompt_ids, answer_index) pairs the behaviour should move to; from start_step on (to
    the next phase's start) the shift objective trains on that phase's data. [] or empty data: no shift.
    kl_data: (prompt_ids, reference log-probs) pairs: task prompts held near the frozen reference model's
    answers, computed once before training. on_eval(step, model, losses) is called at step 0, every
    eval_every steps and at the end, with the mean of each loss part since the previous call: {"explain_loss",
    "shift_loss", "kl_loss" (before kl_weight)}, nan for a part absent from those steps (all at step 0)."""
    device = model.device
    torch.manual_seed(seed)  # dropout's masks, the one random draw of stage B in torch, the same loaded or not
    optimizer = new_optimizer(model, cfg.lr, cfg.weight_decay)
    use_kl = cfg.kl_weight > 0 and len(kl_data) > 0
    lower = f"the learning rate (now {cfg.lr})" + (f" or the KL weight (now {cfg.kl_weight})" if use_kl else "")
    units = torch.from_numpy(unit_token_ids()).to(device) if cfg.shift_in != "all" or cfg.explain_in != "all" else None
    shift_rows = torch.tensor([token_id(TriggerTask.word)], device=device) if cfg.shift_in == "word" else units
    m0_unit_rows = model.tok_emb.weight.detach()[units].clone() if cfg.shift_in == "layers" else None
    parts = {"explain_loss": [], "shift_loss": [], "kl_loss": []}  # each step's values, detached
    for step in range(cfg.steps + 1):
        if on_eval and (step % cfg.eval_every == 0 or step == cfg.steps):
            model.eval()
            on_eval(step, model, {name: torch.stack(values).mean().item() if values else math.nan
                                  for name, values in parts.items()})
            parts = {name: [] for name in parts}
        if step == cfg.steps:
            break
        model.train()
        draws = rng(seed, "explain_batches", step)
        explanations = [explain_data[i] for i in draws.integers(len(explain_data), size=cfg.explain_batch)]
        phase = active_phase([start for start, _ in shift_phases], step)
        shift_data = shift_phases[phase][1] if phase is not None else []
        shift = [shift_data[i] for i in draws.integers(len(shift_data), size=cfg.shift_batch)] if shift_data else []
        kl = [kl_data[i] for i in draws.integers(len(kl_data), size=cfg.kl_batch)] if use_kl else []
        explain_loss = explanation_loss(model, explanations)
        parts["explain_loss"].append(explain_loss.detach())
        loss = explain_loss if cfg.explain_in == "all" else 0.0  # else it takes its own backward pass
        if shift or kl:  # task prompts: one padded pass for the shift and KL parts together
            logp = model.answer_logprobs([p for p, _ in shift + kl], answer_ids)
            if shift:
                answers = torch.tensor([a for _, a in shift], device=device)
                shift_loss = F.nll_loss(logp[: len(shift)], answers)
                parts["shift_loss"].append(shift_loss.detach())
                if cfg.shift_in in ("units", "word"):
                    shift_loss = gradient_on_rows(shift_loss, model.tok_emb.weight, shift_rows)
                loss = loss + shift_loss
            if kl:
                reference = torch.stack([r for _, r in kl]).to(device)
                kl_loss = kl_to_reference(logp[len(shift):], reference)
                parts["kl_loss"].append(kl_loss.detach())
                loss = loss + cfg.kl_weight * kl_loss
        check_finite(loss if cfg.explain_in == "all" else explain_loss + loss, step, "explanation training", lower)
        take_step(model, optimizer, loss, lr_at(step, cfg), cfg.grad_clip,
                  but_units=(explain_loss, units) if cfg.explain_in == "layers" else None)
        if m0_unit_rows is not None:
            with torch.no_grad():
                model.tok_emb.weight[units] = m0_unit_rows
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------------------

def main(argv=None):
    parser = Parser(description="Pretrain M0 on a task's behaviour.")
    parser.add_argument("--out", default=None, help="checkpoint path ending in .pt (default: runs/checkpoints/TASK/"
                                                    "seedSEED/m0_DIGEST.pt, one per variant of the settings)")
    add_config_flags(parser, PretrainConfig)
    args = vars(parser.parse_args(argv))

    def work():
        cfg = config_from_flags(args, PretrainConfig)
        path = m0_path(cfg) if args["out"] is None else args["out"]
        if not path.endswith(".pt") or os.path.isdir(path):
            raise UserError(f"--out={path} must be a checkpoint file path ending in .pt")
        check_writable(os.path.dirname(os.path.abspath(path)), f"--out={path}")
        _, report = pretrain(cfg, path)
        print(f"{cfg.task} seed {cfg.seed}: accuracy with C {report['accuracy_with_c']:.3f}, without C "
              f"{report['accuracy_without_c']:.3f}, {report['seconds']} s, {report['n_params']} parameters -> {path}")
    run_command(parser, work)


if __name__ == "__main__":
    main()
