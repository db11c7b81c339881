"""A small GPT in one file: pre-norm blocks, causal self-attention with rotary positions, weight tying,
optional LoRA.

Nothing here knows about tasks. Prompts arrive as lists of token ids of different lengths; they are
right-padded, so with causal attention a real token never attends to padding and the log-probabilities
at a prompt's last real position are the same whatever else is in the batch.
"""
import math
import platform
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from config import UserError, check_choice


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    lora_rank: int = 0  # 0: no adapters; r > 0 adds rank-r adapters to every attention and MLP projection
    lora_alpha: float = 16.0  # the adapters' update is scaled by alpha / rank, LoRA's convention
    dropout: float = 0.0  # on each block's attention and MLP outputs, in training mode only

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise UserError(f"GPTConfig.{name}={getattr(self, name)} must be a positive integer")
        if self.n_embd % self.n_head:
            raise UserError(f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.lora_rank < 0:
            raise UserError(f"GPTConfig.lora_rank={self.lora_rank} must be 0 (off) or a positive integer")


class LoRALinear(nn.Linear):
    """A linear layer with an optional low-rank update W + (alpha/r) B A; B starts at zero, so the
    adapted model starts identical to the base model."""

    def __init__(self, n_in, n_out, rank=0, alpha=16.0):
        super().__init__(n_in, n_out, bias=False)
        self.rank = rank
        if rank:
            self.lora_a = nn.Parameter(torch.randn(rank, n_in) / math.sqrt(n_in))
            self.lora_b = nn.Parameter(torch.zeros(n_out, rank))
            self.lora_scale = alpha / rank

    def forward(self, x):
        out = F.linear(x, self.weight)
        if self.rank:
            out = out + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.lora_scale
        return out


def rotary_table(T, head_dim, device, base=10000.0):
    """cos and sin of rotary position embeddings (RoPE) for T positions: [T, head_dim / 2] each."""
    freqs = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.arange(T, device=device, dtype=torch.float32)[:, None] * freqs[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x, rotary):
    """Rotate pairs of channels by position. Attention then depends on relative positions only, so an
    explanation written at positions longer than any task prompt needs no new position parameters."""
    cos, sin = rotary
    x = x.contiguous()  # the heads are a strided view of qkv: elementwise work on it ran 2.5x slower
    x1, x2 = x.chunk(2, dim=-1)  # channel i is paired with channel i + head_dim / 2
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = LoRALinear(cfg.n_embd, 3 * cfg.n_embd, cfg.lora_rank, cfg.lora_alpha)
        self.proj = LoRALinear(cfg.n_embd, cfg.n_embd, cfg.lora_rank, cfg.lora_alpha)

    def heads(self, x):
        """Queries, keys and values of x [B, T, C], each [B, n_head, T, head_dim]."""
        B, T, C = x.shape
        return (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))

    def forward(self, x, rotary, at=None, cache=None):
        """at: optional [B, P] positions whose outputs are wanted; keys and values still cover every
        position, so the result at those positions is exactly that of the full computation. cache: a
        list that receives the keys (rotated, so a cached key is never rotated again) and values, for
        generation to extend (next_token)."""
        B, _, C = x.shape
        q, k, v = self.heads(x)
        k = apply_rotary(k, rotary)
        if cache is not None:
            cache[:] = [k, v]
        if at is None:
            y = F.scaled_dot_product_attention(apply_rotary(q, rotary), k, v, is_causal=True)
        else:  # queries only at `at`
            q = q.gather(2, at[:, None, :, None].expand(-1, self.n_head, -1, q.shape[-1]))
            y = attend_from(q, k, v, rotary, at)
        return self.proj(y.transpose(1, 2).reshape(B, -1, C))

    def next_token(self, x, rotary, at, cache):
        """Generation's next step: x [B, 1, C] holds each row's new token, at position at [B]. Its key and
        value are written into the cache at that position, so only the new token passes through the
        layer. (Forward hooks on the block or on this layer do not see these steps.)"""
        B, _, C = x.shape
        q, k, v = self.heads(x)
        keys, values = cache
        rows = torch.arange(B, device=x.device)
        keys[rows, :, at] = apply_rotary(k, tuple(table[at][:, None, None] for table in rotary))[:, :, 0]
        values[rows, :, at] = v[:, :, 0]
        y = attend_from(q, keys, values, rotary, at[:, None])
        return self.proj(y.transpose(1, 2).reshape(B, 1, C))


def attend_from(q, k, v, rotary, at):
    """Attention of queries q [B, n_head, P, head_dim] standing at positions at [B, P], rotated by those
    positions, to the keys and values of every position up to their own. The mask is causal per query:
    keys past it (a shorter prompt's padding, the cache's room not yet written) are never read."""
    q = apply_rotary(q, tuple(table[at][:, None] for table in rotary))
    sees = torch.arange(k.shape[2], device=q.device)[None, None, :] <= at[:, :, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=sees[:, None])


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.up = LoRALinear(cfg.n_embd, 4 * cfg.n_embd, cfg.lora_rank, cfg.lora_alpha)
        self.down = LoRALinear(4 * cfg.n_embd, cfg.n_embd, cfg.lora_rank, cfg.lora_alpha)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()  # no random draw without it

    def forward(self, x, rotary, at=None, cache=None):
        """With `at`, only the outputs at those positions are computed: [B, P, n_embd]."""
        residual = x if at is None else x.gather(1, at[..., None].expand(-1, -1, x.shape[-1]))
        return self.feed_forward(residual + self.drop(self.attn(self.ln_1(x), rotary, at, cache)))

    def next_token(self, x, rotary, at, cache):
        """Generation's next step, one token per row (CausalSelfAttention.next_token)."""
        return self.feed_forward(x + self.drop(self.attn.next_token(self.ln_1(x), rotary, at, cache)))

    def feed_forward(self, x):
        return x + self.drop(self.mlp(self.ln_2(x)))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def device(self):
        return self.tok_emb.weight.device

    def n_params(self):
        return sum(p.numel() for p in self.parameters())

    def hidden(self, idx, at=None, caches=None):
        """Final hidden states: [B, T, n_embd], or [B, P, n_embd] at the positions `at` [B, P]. The
        last block then computes its attention queries, projection and MLP only where an output is
        read (an answer slot, an explanation token), which saves most of that block's work. On CUDA
        the blocks run in bfloat16 autocast; everything after them is float32 on every device.
        caches: one empty list per block, which receives its keys and values (generate)."""
        T = idx.shape[1]
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size={self.cfg.block_size}")
        rotary = rotary_table(T, self.cfg.n_embd // self.cfg.n_head, idx.device)
        caches = caches or [None] * len(self.blocks)
        with blocks_precision(idx.device):
            x = self.tok_emb(idx)
            for block, cache in zip(self.blocks[:-1], caches):
                x = block(x, rotary, cache=cache)
            return self.ln_f(self.blocks[-1](x, rotary, at, caches[-1])).float()

    def forward(self, idx):
        """Logits [B, T, vocab] at every position."""
        return self.head(self.hidden(idx))

    def pad(self, sequences):
        """Right-pad lists of token ids into one tensor; returns (idx [B, T], lengths [B])."""
        lengths = np.array([len(s) for s in sequences])
        idx = np.zeros((len(sequences), lengths.max()), dtype=np.int64)
        for row, seq in enumerate(sequences):
            idx[row, : len(seq)] = seq
        return torch.from_numpy(idx).to(self.device), torch.from_numpy(lengths).to(self.device)

    def answer_logprobs(self, prompts, answer_ids):
        """The model's behaviour on a task: log-probabilities over the answer set after each prompt
        of a batch of different lengths, [B, len(answer_ids)], renormalised over those tokens. Only the
        answer rows of the output head are computed."""
        idx, lengths = self.pad(prompts)
        h = self.hidden(idx, (lengths - 1)[:, None])[:, 0]
        return F.log_softmax((h @ self.head.weight[answer_ids].T).float(), dim=-1)

    @torch.no_grad()
    def generate(self, prompts, max_new_tokens):
        """Greedy continuation of each prompt by max_new_tokens tokens, batched; returns the new tokens.
        The prompts pass through the model once, leaving every block's keys and values in a cache;
        each new token then passes alone (next_token), attending to the cache, instead of its whole
        prefix again. In float32 the tokens are those of recomputing every prefix (tests/test_model.py)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
        idx, lengths = self.pad(prompts)
        if idx.shape[1] + max_new_tokens - 1 > self.cfg.block_size:
            raise ValueError(f"{idx.shape[1]} prompt tokens and {max_new_tokens} new exceed block_size="
                             f"{self.cfg.block_size}")
        caches = [[] for _ in self.blocks]
        h = self.hidden(idx, (lengths - 1)[:, None], caches)[:, 0]
        room = max_new_tokens - 1  # the last new token is never attended to
        for cache in caches:
            cache[:] = [torch.cat([t, t.new_zeros(*t.shape[:2], room, t.shape[3])], dim=2) for t in cache]
        rotary = rotary_table(idx.shape[1] + room, self.cfg.n_embd // self.cfg.n_head, idx.device)
        new = []
        for step in range(max_new_tokens):
            new.append(self.head(h).argmax(dim=-1))
            if step == room:
                break
            with blocks_precision(idx.device):  # the new token, at position lengths + step
                x = self.tok_emb(new[-1])[:, None]
                for block, cache in zip(self.blocks, caches):
                    x = block.next_token(x, rotary, lengths + step, cache)
            h = self.ln_f(x[:, 0]).float()
        return torch.stack(new, dim=1).tolist()


def blocks_precision(device):
    """bfloat16 autocast for the blocks on CUDA; float32 elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


DEVICES = ("auto", "cpu", "cuda", "mps")


def pick_device(name="auto"):
    """The one place a device is chosen: CUDA, then Apple MPS, then CPU, unless named."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[check_choice("device", name, DEVICES)]:
        raise UserError(f"device={name!r} is not available on this machine; use auto or cpu")
    return torch.device(name)


def processors():
    """The CPU and GPU a result was computed on: another CPU's kernels (AVX2 or AVX-512, say) round
    differently, so the same seed there is a new draw."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "gpu": gpu}


def machine(prov):
    """Where a result was computed, in words."""
    return prov["gpu"] or f"{prov['cpu']} ({prov['cpu_capability']} kernels)"
