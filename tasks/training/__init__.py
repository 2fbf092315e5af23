"""Stage 4: fine-tuning Florence-2 (LoRA) or a ViT classifier with the Hugging Face Trainer."""
