"""`cmkd bench perf`: where the time and memory go, as ratios against a baseline timed in the
same process (issue #8). overhead.py: (a) distillation overhead per epoch; micro.py: (b) DynM
matching, (c) CORAL, SKA's parts; loading.py: (d) data rates; ddp.py: (e) DDP against one
process; page.py renders the page from its store; run.py runs the sections and writes both."""
