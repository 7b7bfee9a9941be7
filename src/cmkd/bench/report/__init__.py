"""The page of a benchmark grid (`cmkd report`): tables.py reads the cells into one table per
scenario x architecture pair with its statistics, plots.py draws the figures, page.py builds
the compact store and renders the page from it."""
