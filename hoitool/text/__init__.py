"""Text from a vision-language teacher (CL-HOI adapted to video): imported captions and
<interaction, object> triplets, the caption -> triplet rules, text encoders, and the
fingerprinted text-embeddings artifact. See docs/vlm-import.md and docs/method-cl-hoi.md.
"""
