"""`cmkd bench perf`: where the time and memory go, as ratios against a baseline timed in the
same process, on one page with the aims of issues #8, #16 and #19 and a verdict for each.

Measurements (one section each, `run.SECTIONS`): runloop.py (`help`: the command's start-up;
`runloop`: a tiny fit against plain PyTorch), reference_loops.py (`loops`: the distillation
epoch against the reference codes' loop), overhead.py (`overhead`, `overhead_large`: each
method's epoch against no KD), ska.py (`ska`: SemBridge's step against KD's), runloop_distill.py
(`precision`, `checkpoints`), threads.py (`threads`), micro.py (`dynm`, `coral`), loading.py
(`data`), ddp.py (`ddp`); timing.py holds the timing helpers they share.

The page, rendered from its store alone (no torch): page.py (layout and each section's intro),
aims.py (the aims and verdicts), tables_*.py (each section's tables), markdown.py (number
formats). run.py runs the chosen sections and writes the store and the page.
"""
