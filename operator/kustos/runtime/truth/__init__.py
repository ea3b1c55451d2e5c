"""`kustos truth`: the ground-truth monitor. Logged predictions (KServe CloudEvents) are
joined by inference id with labels (Seldon feedback, a V2-style feedback endpoint, bulk
files) and evaluated per model version over a window."""
