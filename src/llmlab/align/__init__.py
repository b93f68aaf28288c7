"""Aligning a model with preferences: the preference losses (DPO, IPO, SimPO, ORPO) and their recipe."""
