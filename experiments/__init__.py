"""The steps users run (train_cae, finetune, vae, analyze, main) and what they share."""
