"""Task-specific steps the notebooks call: one task module per notebook, all with the same shape.

| notebook | task module (`import ... as task`) |
|---|---|
| image_classification | `kagglekit_nb.tasks.classification` |
| glacier_pretrain | `kagglekit_nb.tasks.glacier.pretrain` |
| glacier_finetune | `kagglekit_nb.tasks.glacier.finetune` |
| isic_embed_lgbm | `kagglekit_nb.tasks.isic.pipeline` |

Every task module exposes the same verbs, in this order, with the same arguments (like fit/predict
on every scikit-learn estimator), so the four notebooks are one sequence of cells:

    cfg     = task.Config.from_namespace(globals())     # a NotebookConfig: the parameters cell, type-checked
    run     = task.start(cfg)                            # -> Run: seed, budget, output folder, device
    data    = task.load(cfg, run)                        # -> the task's data (DATA_DIR, else found, else the demo)
    folds   = task.make_folds(data, cfg, run)            # -> pd.Series, fold per row, saved once (folds.csv)
    models  = task.train(data, folds, cfg, run)          # -> what was trained, inside the budget, resumable
    preds   = task.predict(data, models, cfg, run)       # -> what the submission is written from
    path    = task.write_submission(data, preds, cfg, run)  # -> Path of the submission
    report  = task.finish(data, path, cfg, run)          # -> the verification report (verification.json, run.json)
    figures = task.plot_results(run, data, models, folds)   # -> dict[str, Path] of plots in <run>/plots

What each returns:

| verb | classification | glacier.pretrain | glacier.finetune | isic.pipeline |
|---|---|---|---|---|
| `load` | `Competition` | `TileData` (HKH patches) | `TileData` (GlacierHack tiles) | `isic.data.Competition` |
| `make_folds` | stratified | grouped by scene | HOLDOUT tiles (-1), then K folds | grouped by patient, stratified |
| `train` | `CVResult` | `CVResult` | `CVResult` (finds the pretrained weights first) | `Trained` (embeddings, fine-tune scores, features, LightGBM) |
| `predict` | class probabilities or None | the weights to hand on, or None | `Ensemble` (weights + statistics per member) | test probabilities or None |
| `write_submission` | `submission.csv` | `glacier_pretrained.pth` (or None) | the code package folder | `submission.csv` |
| `finish` | verify vs the sample | the weights load and map onto the GlacierHack bands | run the package on the holdout, MCC | verify vs the sample |

`predict` reads trained models from the run folder, so a session that only predicts works;
`preds=None` makes `write_submission` write the task's emergency baseline. Task-specific sub-steps
stay public in their modules (e.g. `isic.embeddings.embeddings`, `glacier.finetune.find_pretrained`).
`start`, `find_data` and the bundled `Demo` are shared by every task (`tasks._config`).
"""
