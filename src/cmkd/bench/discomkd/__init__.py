"""`cmkd bench discomkd`: DisCoM-KD against single-modality training and logit KD baselines.
scenarios.py says what is compared, run.py runs it (resumably), page.py renders the page from
its compact store."""
