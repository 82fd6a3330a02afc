"""Pictures (`--plot FILE`): data.py turns reports into plain series (no matplotlib, no torch); draw.py, imported
only with --plot, draws them with matplotlib."""
