"""Training: datasets (ImageFolder loading and the emoji fetch in `data`), then the teacher and the distilled student."""
