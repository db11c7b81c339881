"""After a run: its saved final explainer, loaded, probed, patched, diagnosed, and shown item by item.

A run saves its final explainer beside its result (eval.run_coupling), so every analysis here reads it
back instead of running inside training: the suites probe and patch their KL runs (analyse_run), and
`python experiments.py show` prints a run's explanations next to the labels they are scored against.
"""
import glob
import os
from collections import Counter

import numpy as np

import train
from config import UserError
from data import get_task
from eval import RunConfig, config_from_dict, explainer_path, read_result
from features import held_out
from explain import (answers_with_c, behaviour, current_labels, explanation_query, explanations_of, explanation_text,
                     generate_explanations, labels_from_behaviour, malformed_kind, parse_leniently, probe_explainer,
                     queries_for, read_explanations)
from metrics import coupling_metrics
from model import GPT, GPTConfig, pick_device
from patching import patching_effects
from train import load_checkpoint, m0_path, write_json



def load_model(path, device="cpu"):
    """A model saved by train.save_checkpoint (M0 or a final explainer), ready to evaluate."""
    ckpt = load_checkpoint(path, device)
    model = GPT(GPTConfig(**ckpt["model_config"])).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def saved_run(result_path, runs_dir=None, device=None):
    """(config, task, split, probed task, held-out items, M0, final explainer) of a saved run, loaded on
    `device` (default: the one it ran on)."""
    cfg = config_from_dict(read_result(result_path)["config"])
    task, device = get_task(cfg.task), pick_device(device or cfg.pretrain.device)
    split = task.split(cfg.seed, cfg.n_explain, cfg.n_eval, cfg.validation)
    probed, items = held_out(cfg, task, split)
    return (cfg, task, split, probed, items, load_model(m0_path(cfg.pretrain, runs_dir), device),
            load_model(explainer_path(result_path), device))


def diagnose(model, probed, items, frozen):
    """The final explainer's malformed explanations sorted by kind, and its scores when its text is read
    leniently (the first verdict word and answer anywhere): a diagnostic of format failures; every
    metric reads strictly. frozen: E(M0) on the items."""
    texts = generate_explanations(model, probed, items)
    now, logp = current_labels(model, probed, items)
    lenient = coupling_metrics(read_explanations(probed, texts, parse_leniently), now, frozen, answers_with_c(logp))
    return {"malformed_kinds": dict(Counter(kind for kind in (malformed_kind(probed, t) for t in texts) if kind)),
            **{f"lenient_{key}": lenient[key] for key in ("self", "orig", "gap", "self_flipped", "tracking",
                                                                 "verdict_tracking")}}


def analyse_run(result_path, runs_dir=None):
    """Probes, activation patching and the diagnosis of a saved run's final explainer, added to its result.
    They ask the plain query: only the main result's runs, which use it, are analysed."""
    result = read_result(result_path)
    if result["config"]["query"] != "plain":  # refused before either model is loaded
        raise ValueError(f"analyse_run asks the plain query; {result_path} asked {result['config']['query']!r}")
    _, _, _, probed, items, m0, model = saved_run(result_path, runs_dir)
    frozen = current_labels(m0, probed, items)[0]  # E(M0), for both
    result.update(probes=probe_explainer(model, probed, items, frozen), patching=patching_effects(model, probed, items),
                  diagnosis=diagnose(model, probed, items, frozen))
    write_json(result, result_path)
    return result


# ---------------------------------------------------------------------------------------------------------
# Looking at a saved run, item by item


def find_result(cfg: RunConfig, runs_dir=None):
    """Your saved result of this very config (any experiment) with its final explainer, or a one-line error."""
    pattern = os.path.join(runs_dir or train.RUNS_DIR, "results", "*", cfg.task, f"{cfg.name}.json")
    # a sweep holds a copy of the main suite's result of the same run, without its explainer
    found = [path for path in sorted(glob.glob(pattern)) if os.path.exists(explainer_path(path))]
    if not found:
        raise UserError(f"no saved run of {cfg.task} {cfg.name} under {os.path.dirname(os.path.dirname(pattern))}; "
                         f"run it first (python eval.py run, make quick or make reproduce, same flags)")
    return found[0]


def show(cfg: RunConfig, n=3, runs_dir=None, out=print):
    """Print n flipped and n unflipped held-out items of a saved run: the prompt with and without C, M0's
    and the final model's answers, the frozen label E(M0), the current label E(M_t), the explanation,
    and whether it matches each."""
    path = find_result(cfg, runs_dir)
    _, _, _, probed, items, m0, model = saved_run(path, runs_dir, cfg.pretrain.device)
    (m0_with, m0_without), (now_with, now_without) = behaviour(m0, probed, items), behaviour(model, probed, items)
    frozen, current = labels_from_behaviour(m0_with, m0_without), labels_from_behaviour(now_with, now_without)
    queries = queries_for(cfg.query, cfg.seed, probed, now_with, "held_out")
    explanations = explanations_of(model, probed, items, queries)
    flipped = ~current.matches(frozen)
    text = lambda labels, i: ("malformed" if labels.changed[i] < 0 else
                              explanation_text(probed, labels.changed[i], labels.answer[i]).strip())
    answer = lambda a: probed.answers[a]
    out(f"{path}\n{int(flipped.sum())} of {len(items)} held-out items flipped (E(M0) != E(M_t)).")
    for kind, rows in (("flipped", np.flatnonzero(flipped)[:n]), ("unflipped", np.flatnonzero(~flipped)[:n])):
        for i in rows:
            out(f"\n[{kind}] {explanation_query(probed, items[i], queries[i])}\n"
                f"  with C:    {probed.render(items[i])}   M0 {answer(m0_with[i])}, now {answer(now_with[i])}\n"
                f"  without C: {probed.render(probed.without_feature(items[i]))}   M0 {answer(m0_without[i])}, "
                f"now {answer(now_without[i])}\n"
                f"  frozen label E(M0): {text(frozen, i)} | current label E(M_t): {text(current, i)}\n"
                f"  explanation: {text(explanations, i)}  -> Self {'yes' if explanations.matches(current)[i] else 'no'}, "
                f"Orig {'yes' if explanations.matches(frozen)[i] else 'no'}")
