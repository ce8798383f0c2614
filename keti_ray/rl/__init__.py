"""The learned allocator: a candidate-placement environment, a masked candidate-scoring
RLModule, behaviour cloning of FGD followed by RLlib PPO, and verified checkpoints.

Modules: `candidates` (candidate placements + features; FGD's choice is always slot 0),
`env` (gymnasium environment `keti-ray-alloc-v0`), `module` (torch RLModule), `train`
(BC + PPO + evaluation vs FGD), `config` (rllib_configs/*.yaml), `checkpoint` (SHA-256
manifests), `policy` (the Allocator that `--policy ppo[:PATH]` loads).
"""
