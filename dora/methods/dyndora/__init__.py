"""DynDoRA (Dynamic Rank Distribution, Mao et al. 2024): layer, allocator + DEM, export, method."""

from dora.methods.dyndora.method import DynDoRA, DynDoRAConfig

__all__ = ["DynDoRA", "DynDoRAConfig"]
