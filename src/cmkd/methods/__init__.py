"""LightningModules, one per training recipe, on a shared classifier base."""
