"""Evaluation: exact, named metrics over run outputs and Charades submissions, and the cross-seed report."""
