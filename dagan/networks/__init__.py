"""Pure ``nn.Module`` networks: no file I/O, no device placement, no losses."""
