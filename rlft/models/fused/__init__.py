"""The CPU fast paths, in one place: the fused Llama decoder for sampling (``llama_decoder``), the fused
Llama forward for training (``llama_forward``) and for a frozen reference (``frozen``), the oneDNN linears
(``onednn``: prepacked and autograd; ``onednn_linears``: installed on a Hugging Face body), the RoPE
formula they all share (``rope``) and the C kernels with their torch references (``kernels``).

Which of them a run uses is decided in one function, :func:`rlft.models.forward_path.forward_plan`, and
printed at the start of every trainer. All of them compute the same function as the model's own
Hugging Face forward (to float rounding); they exist for speed on the CPU only.
"""
