"""DynDoRA harness: DoRA with Dynamic Rank Distribution (Mao et al., ACL 2024) and its baselines.

Not the weight-decomposed "DoRA" (Liu et al. 2024) that HF PEFT ships as ``use_dora``.
"""

__version__ = "0.1.0"
