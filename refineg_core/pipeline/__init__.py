"""Stages and the machinery that runs them resumably."""
