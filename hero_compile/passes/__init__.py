"""Graph passes: pure functions from an FX graph (and the config) to a new graph or an analysis."""
