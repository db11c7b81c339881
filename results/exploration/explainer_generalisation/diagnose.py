"""Why does an explainer fail? Rerun one main-result KL run with a hook that, at every evaluation, also
scores the explanations on the 300 training items (against their frozen labels and the current behaviour)
and records the verdict mix on held-out items. From the repository root:

    PYTHONPATH=. python results/exploration/explainer_generalisation/diagnose.py TASK SEED [WEIGHT_DECAY]

writes TASK_seedSEED.json in the current folder."""
import json, sys
import eval as ev
import train
from data import get_task
from explain import behaviour, labels_from_behaviour, explain

task_name, seed = sys.argv[1], int(sys.argv[2])
wd = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
cfg = ev.RunConfig(task=task_name, seed=seed, pretrain=train.PretrainConfig(),
                   explain=train.ExplainConfig(weight_decay=wd))
task = get_task(task_name)
split = task.split(cfg.seed, cfg.n_explain, cfg.n_eval)
rows = []
real_train = ev.train_explainer

def hooked(model, ecfg, seed_, explain_data, shift_phases, kl_data, answer_ids, on_eval):
    m0_labels = None
    def on_eval2(step, m):
        nonlocal m0_labels
        on_eval(step, m)
        cur = labels_from_behaviour(*behaviour(m, task, split.explain_items))
        if m0_labels is None:
            m0_labels = cur
        exp_train = explain(m, task, split.explain_items)
        exp_eval = explain(m, task, split.eval_items)
        rows.append(dict(step=step, train_fit=float(exp_train.matches(m0_labels).mean()),
                         train_self=float(exp_train.matches(cur).mean()),
                         train_become=float((exp_train.changed == 1).mean()),
                         train_label_become=float(m0_labels.changed.mean()),
                         eval_become=float((exp_eval.changed == 1).mean()),
                         eval_malformed=float((exp_eval.changed == -1).mean())))
        print(rows[-1], flush=True)
    return real_train(model, ecfg, seed_, explain_data, shift_phases, kl_data, answer_ids, on_eval2)

ev.train_explainer = hooked
result = ev.run_coupling(cfg, analyse=False, log=lambda s: print(s, flush=True))
for r, c in zip(rows, result["curve"]):
    r.update(self=c["self"], orig=c["orig"], gap=c["gap"], self_flipped=c["self_flipped"])
json.dump(rows, open(f"{task_name}_seed{seed}.json", "w"), indent=1)
