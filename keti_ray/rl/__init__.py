"""The learned allocator: candidate placements and features read from the live cluster state,
a candidate-scoring network (plain torch) and its RLlib RLModule, policy search (CMA-ES on
full replays: what made the shipped policy), a rollout teacher to distil, behaviour cloning
followed by RLlib PPO, and pickle-free checkpoints.

Modules: `candidates` (candidate placements + features; FGD's choice is always slot 0),
`env` (gymnasium environment `keti-ray-alloc-v0`), `scorer` (the network), `module` (RLModule),
`search` (CMA-ES over the network's linear head, judged by replays paired with FGD),
`teacher` (FGD rollouts over sampled or real futures, for labels), `train` (BC + PPO +
evaluation vs FGD), `config` (rllib_configs/*.yaml), `checkpoint` (safetensors + config.json +
SHA-256 manifest), `policy` (the Allocator that `--policy ppo[:PATH]` loads), `retrain`.
"""
