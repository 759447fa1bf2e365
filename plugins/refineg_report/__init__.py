"""A self-contained HTML report of a stage's predictions (``refineg report``)."""
