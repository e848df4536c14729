"""The ModernArch GPT trainer with gated attention. Imports only torch, numpy and pyyaml."""
