"""One run of a setting: the loop and what it writes, resumes and reports.

| module | what happens there |
|---|---|
| loop.py | ``run()``: checks, parts, the round loop (plan -> budget -> run -> record -> EMA -> row -> checkpoint) |
| resume.py | run identity and fingerprint, checkpoint save/restore, Ctrl-C stop |
| run_dir.py | the files a run writes; refusing or overwriting a previous run |
| outputs.py | metrics.csv and TensorBoard sinks |
| evaluation.py | test accuracy and loss, the train subset |
| summary.py | summary.json and the final model files |
| checkpoint.py | atomic checkpoint directories |
"""
