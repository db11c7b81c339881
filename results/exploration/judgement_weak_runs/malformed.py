"""What do a run's explanations say on the flipped items, and what do its malformed ones look like?
Reruns one default KL run (compare its Self with the saved run's) and inspects the final explainer, and
M0 (a copy of the explainer before stage B) for the frozen labels. See summary.txt."""
import collections, copy, sys
import numpy as np
import eval as ev
from data import get_task, encode, decode
from explain import behaviour, labels_from_behaviour, explanation_query, EXPLANATION_TOKENS, parse_explanation

task_name, seed = sys.argv[1], int(sys.argv[2])
cfg = ev.RunConfig(task=task_name, seed=seed)
task = get_task(task_name)
split = task.split(cfg.seed, cfg.n_explain, cfg.n_eval)
final = {}
real = ev.train_explainer
def hooked(model, *a, **k):
    final["m0"] = copy.deepcopy(model)  # the explainer before stage B is M0
    out = real(model, *a, **k)
    final["model"] = out
    return out
ev.train_explainer = hooked
result = ev.run_coupling(cfg, analyse=False, log=lambda s: None)
m = final["model"]
items = split.eval_items
now = labels_from_behaviour(*behaviour(m, task, items))
texts = [decode(t) for t in m.generate([encode(explanation_query(task, c)) for c in items], EXPLANATION_TOKENS)]
parsed = [parse_explanation(task, t) for t in texts]
mal = [t for t, p in zip(texts, parsed) if p is None]
print(task_name, seed, "Self", result["final"]["self"], "S@f", round(result["final"]["self_flipped"], 3),
      "malformed", len(mal))
print("  malformed texts:", collections.Counter(mal).most_common(6))
ch = np.array([p[0] if p else -1 for p in parsed])
print("  says become on", round(float((ch == 1).mean()), 3), "behaviour changes on", round(float(now.changed.mean()), 3))

orig = labels_from_behaviour(*behaviour(final["m0"], task, items))
flipped = ~now.matches(orig)
print("  flipped", int(flipped.sum()), "malformed among flipped", round(float((ch[flipped] == -1).mean()), 3),
      "among others", round(float((ch[~flipped] == -1).mean()), 3))
remain, become = encode(" remain")[0], encode(" become")[0]
verdict_lp = m.answer_logprobs([encode(explanation_query(task, c) + " would") for c in items], [remain, become])
forced = verdict_lp.argmax(-1).numpy()
print("  forced verdict = current on flipped", round(float((forced == now.changed)[flipped].mean()), 3),
      "= M0's on flipped", round(float((forced == orig.changed)[flipped].mean()), 3),
      "= current on others", round(float((forced == now.changed)[~flipped].mean()), 3))
print("  forced verdict = current on flipped & malformed", round(float((forced == now.changed)[flipped & (ch == -1)].mean()), 3),
      "n", int((flipped & (ch == -1)).sum()))
