"""The CPU fast paths, in one place: the fused Llama decoder for sampling, the fused Llama forward for
training and for a frozen reference, the oneDNN linears and the C kernels.

Which of them a run uses is decided in one function, :func:`rlft.models.forward_path.forward_plan`, and
printed at the start of every trainer. All of them compute the same function as the model's own
Hugging Face forward (to float rounding); they exist for speed on the CPU only.
"""
