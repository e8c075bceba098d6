"""ReaSeq streaming recommender: the `reaseq` command line."""
