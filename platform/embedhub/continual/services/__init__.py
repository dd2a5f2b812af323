"""Writes of continual learning.

- `finetune`: the fine-tune job's work, from params to a registered child version.
- `reindex`: building a shadow index, the gate, the swap, schedules and retention.
"""
