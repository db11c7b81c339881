"""Activation patching: do the task answer and the explanation of it run through the same components?

The paper's mechanism claim is that behaviour and explanation share circuits. Here that is measured
directly, by activation patching between a counterfactual pair: the run on x (with C) is the clean run,
the run on x\\C (without C) the source. One component's output is recorded in the source run and written
into the clean run in its place; how far that single substitution moves the clean run's output towards
the source run's output is that component's effect:

    effect = (mean m_patched - mean m_clean) / (mean m_source - mean m_clean)

with each item's metric signed so that removing C raises it (m_source > m_clean on every item; a verdict
can flip in either direction, and unsigned, the two directions would cancel in the means).

0: the component carries nothing of C's influence; 1: patching it alone reproduces removing C. A ratio of
means stays finite where a per-item ratio would not; with no items, or a denominator of about zero, the
effect is nan (null in JSON), never a silent division by zero.

Components, for each layer l: "L{l} attn" (the attention output added to the residual stream), "L{l} mlp"
(the MLP output) and "L{l} resid" (the residual stream after block l), patched through forward hooks, so
model.py stays as it is. x and x\\C differ in length (C's tokens are gone), so only the positions of their
common suffix are patched, aligned from the end of each sequence. The suffix tokens are the same in both
runs, so at layer 0 C can reach them only through attention: there "L0 attn" and "L0 resid" have one effect.
The items are the cases on which removing C changes both the model's own greedy answer and its
explanation's verdict: where the verdict stays put, the explanation effect would be a ratio over a
difference of about zero (measured: up to -4.7 at one component when every item was used).

Two outputs are measured, each as a difference of two logits at the last position:
  behaviour:   prompt = the task prompt, suffix = the answer slot (" answer :"),
               m = log p(a_noC) - log p(a_C) over the answer set, where a_C and a_noC are the model's own
               greedy answers with and without C (the log-softmax normaliser cancels, so this is the
               difference of the two answers' logits);
  explanation: prompt = the explanation query + " would", suffix = " if the hint were removed ? would",
               m = logit(" become") - logit(" remain"), the verdict word that comes next.
If behaviour and explanation share circuits, the two effect profiles over components should look alike.
"""
import numpy as np
import torch

from data import encode, token_id
from explain import QUERY, behaviour, explanation_query

WOULD = " would"  # every explanation's first token; the verdict word (" remain" or " become") follows
DENOMINATOR_EPS = 1e-6  # |mean m_source - mean m_clean| below this: no effect can be measured (nan)


def component_names(model):
    """The patched components in order: attention, MLP and residual stream of each layer."""
    return [f"L{layer} {part}" for layer in range(len(model.blocks)) for part in ("attn", "mlp", "resid")]


def _modules(model):
    """Component name -> the module whose forward output is that component."""
    modules = {}
    for layer, block in enumerate(model.blocks):
        modules.update({f"L{layer} attn": block.attn, f"L{layer} mlp": block.mlp, f"L{layer} resid": block})
    return modules


def _final_metric(model, idx, lengths, plus, minus):
    """logit(plus) - logit(minus) at each row's last real position: [B]. Every position is computed
    (no `at`), so each hooked module sees the whole sequence."""
    h = model.hidden(idx)
    logits = model.head(h[torch.arange(len(idx), device=idx.device), lengths - 1]).float()
    return logits.gather(1, plus[:, None])[:, 0] - logits.gather(1, minus[:, None])[:, 0]


def _suffix_positions(lengths, n_suffix):
    """The last n_suffix real positions of each right-padded row: [B, n_suffix]."""
    return lengths[:, None] - n_suffix + torch.arange(n_suffix, device=lengths.device)[None, :]


def _check_suffix(prompts, suffix, what):
    for prompt in prompts:
        if len(prompt) <= len(suffix) or list(prompt[-len(suffix):]) != list(suffix):
            raise ValueError(f"every {what} prompt must end with the suffix {suffix} and be longer than it; "
                             f"got {list(prompt)}")


@torch.no_grad()
def patched_metrics(model, clean, source, suffix, plus, minus, batch_size=256):
    """The metric logit(plus) - logit(minus) per item on the clean prompts, on the source prompts, and
    on the clean prompts with each component patched from the source run at the suffix positions.

    clean, source: lists of token-id lists, item i of one paired with item i of the other; both end with
    the token ids `suffix`. plus, minus: token ids per item. Returns (m_clean [N], m_source [N],
    {component: m_patched [N]}) as float64 arrays. Batched; every hook is removed on return or error."""
    if not len(clean) == len(source) == len(plus) == len(minus):
        raise ValueError(f"clean, source, plus and minus need one entry per item; got lengths "
                         f"{len(clean)}, {len(source)}, {len(plus)}, {len(minus)}")
    _check_suffix(clean, suffix, "clean")
    _check_suffix(source, suffix, "source")
    modules, n_suffix = _modules(model), len(suffix)
    out = {"clean": [], "source": [], **{name: [] for name in modules}}
    sources = {}  # component -> its output at the suffix positions in the source run [B, n_suffix, n_embd]
    run = {"record_at": None, "patch": None}  # what the hooks do in the current pass; both None: nothing

    def hook(name):
        def fn(module, inputs, output):
            rows = torch.arange(len(output), device=output.device)[:, None]
            if run["record_at"] is not None:
                sources[name] = output[rows, run["record_at"]].clone()
            elif run["patch"] is not None and run["patch"][0] == name:
                output = output.clone()
                output[rows, run["patch"][1]] = sources[name]
                return output  # replaces the module's output downstream
        return fn

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        for start in range(0, len(clean), batch_size):
            chunk = slice(start, start + batch_size)
            plus_t, minus_t = (torch.tensor(np.asarray(t[chunk]), device=model.device) for t in (plus, minus))
            idx, lengths = model.pad(source[chunk])
            run["record_at"] = _suffix_positions(lengths, n_suffix)
            out["source"].append(_final_metric(model, idx, lengths, plus_t, minus_t))
            run["record_at"] = None
            idx, lengths = model.pad(clean[chunk])
            out["clean"].append(_final_metric(model, idx, lengths, plus_t, minus_t))
            for name in modules:
                run["patch"] = (name, _suffix_positions(lengths, n_suffix))
                out[name].append(_final_metric(model, idx, lengths, plus_t, minus_t))
            run["patch"] = None
    finally:
        for handle in handles:
            handle.remove()
    arrays = {k: torch.cat(v).double().cpu().numpy() if v else np.zeros(0) for k, v in out.items()}
    return arrays.pop("clean"), arrays.pop("source"), arrays


def effect(m_clean, m_source, m_patched):
    """(mean m_patched - mean m_clean) / (mean m_source - mean m_clean); nan with no items or a
    denominator below DENOMINATOR_EPS."""
    if len(m_clean) == 0:
        return float("nan")
    denominator = float(np.mean(m_source) - np.mean(m_clean))
    if abs(denominator) < DENOMINATOR_EPS:
        return float("nan")
    return float((np.mean(m_patched) - np.mean(m_clean)) / denominator)


def _effects(metrics, names, rows):
    """Per component effect over the items `rows` of patched_metrics' output, plus the clean and source
    metric means there (what the effects are scaled by). Each item's metric is first signed so that
    removing C raises it: a verdict can flip either way (become -> remain or remain -> become), and
    unsigned, items flipping in opposite directions cancel in the means."""
    m_clean, m_source, patched = metrics
    sign = np.where(m_source[rows] >= m_clean[rows], 1.0, -1.0)
    m_clean, m_source = sign * m_clean[rows], sign * m_source[rows]
    means = {"clean": float(np.mean(m_clean)) if len(rows) else float("nan"),
             "source": float(np.mean(m_source)) if len(rows) else float("nan")}
    return [effect(m_clean, m_source, sign * patched[name][rows]) for name in names], means


def patching_effects(model, task, items, max_items=256):
    """Behaviour and explanation effect of every component, over the first max_items of `items` (cases
    with C) on which removing C changes both the model's own greedy answer and its explanation's
    verdict (the sign of logit(become) - logit(remain)). Where the verdict stays put, the explanation
    effect would be a ratio over a difference of about zero.

    Returns a JSON-serialisable dict: n_items, n_answer_changed (items whose answer changes, before
    the verdict is required to change too), components (names in order), behaviour and explanation
    (one effect per component, nan where undefined), and metric_means: the mean clean and source metric
    of each (signed per item as in _effects), the scale the effects are measured on."""
    items = list(items)
    with_c, without_c = behaviour(model, task, items)
    changed = np.flatnonzero(with_c != without_c)
    cases = [items[i] for i in changed]
    a_c, a_noc = with_c[changed], without_c[changed]
    answer_ids = np.array(task.answer_ids)
    behaviour_metrics = patched_metrics(
        model, [task.encode(c) for c in cases], [task.encode(task.without_feature(c)) for c in cases],
        encode(task.slot), answer_ids[a_noc], answer_ids[a_c])
    explanation_metrics = patched_metrics(
        model, [encode(explanation_query(task, c) + WOULD) for c in cases],
        [encode(explanation_query(task, task.without_feature(c)) + WOULD) for c in cases],
        encode(QUERY.format(feature=task.feature) + WOULD),
        np.full(len(cases), token_id("become")), np.full(len(cases), token_id("remain")))
    verdict_with_c, verdict_without_c, _ = explanation_metrics
    rows = np.flatnonzero(np.sign(verdict_with_c) != np.sign(verdict_without_c))[:max_items]
    names = component_names(model)
    behaviour_effects, behaviour_means = _effects(behaviour_metrics, names, rows)
    explanation_effects, explanation_means = _effects(explanation_metrics, names, rows)
    return {"n_items": len(rows), "n_answer_changed": len(cases), "components": names,
            "behaviour": behaviour_effects, "explanation": explanation_effects,
            "metric_means": {"behaviour": behaviour_means, "explanation": explanation_means}}


def _correlation(a, b):
    """Pearson correlation over the entries finite in both; nan if fewer than 3 or no variance."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or a[keep].std() == 0 or b[keep].std() == 0:
        return float("nan")
    return float(np.corrcoef(a[keep], b[keep])[0, 1])


def _nanmean(rows):
    """Column means over the finite entries of a 2-d array; nan (without a warning) where none is."""
    finite = np.isfinite(rows)
    counts = finite.sum(axis=0)
    return np.where(counts > 0, np.where(finite, rows, 0.0).sum(axis=0) / np.maximum(counts, 1), np.nan)


def mean_profiles(results):
    """{task: (component names, mean behaviour effects, mean explanation effects, correlation, runs)}
    over the results holding patching effects on at least one item (a run with none has no profile to
    average; patching_table counts only the runs that have one). The correlation is over the attention
    and MLP outputs only: the residual-stream entries are sums of those ("L0 resid" equals "L0 attn" at
    the suffix, the last "resid" is 1 by construction)."""
    by_task = {}
    for result in results:
        if result.get("patching") and result["patching"]["n_items"]:
            by_task.setdefault(result["config"]["task"], []).append(result)
    profiles = {}
    for task, runs in sorted(by_task.items()):
        names = runs[0]["patching"]["components"]
        means = [_nanmean(np.array([[np.nan if v is None else v for v in r["patching"][kind]] for r in runs], float))
                 for kind in ("behaviour", "explanation")]
        parts = [i for i, name in enumerate(names) if not name.endswith("resid")]
        profiles[task] = (names, *means, _correlation(means[0][parts], means[1][parts]), runs)
    return profiles
