"""The thesis reference's pipeline, reproduced as written, defects included. Do not train with it.

This file exists so notebook 03 can show each defect on real code and then point to the fix in
:mod:`t2i_helpers.models.baseline` and :mod:`t2i_helpers.text`. Every defect is marked ``# DEFECT n``:

1. ``img_size`` is undefined inside ``ImageDecoder.forward`` (a ``NameError`` at the first call).
2. The tokenized inputs stay on the CPU while the model is on the GPU (a device error on CUDA).
3. The mean over ``last_hidden_state`` includes padding tokens, so a caption's vector changes with the
   length of the longest caption in its batch.
4. ``Adam(model.parameters(), lr=2e-4)`` fine-tunes all of BERT with the decoder's learning rate:
   slow (BERT runs forward *and* backward every step) and it drifts the pretrained encoder.
5. The default ``DataLoader`` collate turns a batch of 5-caption lists into 5 tuples, one per caption
   *position*, so ``captions`` is no longer one list per image: the model trains on the wrong captions.
6. The loss is called "contrastive" but is ``nn.MSELoss``: pixel regression, no negatives at all.
7. The loss printed each epoch is the last batch's, not the epoch's mean.

And the deeper problem, which no bug fix cures: MSE regression learns the conditional mean
E[image | caption], so a caption that fits many images yields their blurry average.
"""
import torch
import torch.nn as nn
from transformers import BertModel, BertTokenizer


class TextEncoder(nn.Module):
    def __init__(self, model_name="bert-base-uncased"):
        super().__init__()
        self.tokenizer = BertTokenizer.from_pretrained(model_name)
        self.bert = BertModel.from_pretrained(model_name)

    def forward(self, captions):
        inputs = self.tokenizer(captions, return_tensors="pt", padding=True, truncation=True)  # DEFECT 2
        outputs = self.bert(**inputs)
        return outputs.last_hidden_state.mean(dim=1)  # DEFECT 3


class ImageDecoder(nn.Module):
    def __init__(self, text_dim=768, img_size=64):
        super().__init__()
        self.fc = nn.Linear(text_dim, 128 * (img_size // 4) * (img_size // 4))
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(128, 64, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 3, kernel_size=4, stride=2, padding=1),
            nn.Tanh(),
        )

    def forward(self, text_features):
        x = self.fc(text_features)
        x = x.view(-1, 128, img_size // 4, img_size // 4)  # DEFECT 1  # noqa: F821
        return self.deconv(x)


class TextToImageModel(nn.Module):
    def __init__(self, model_name="bert-base-uncased", text_dim=768, img_size=64):
        super().__init__()
        self.text_encoder = TextEncoder(model_name)
        self.image_decoder = ImageDecoder(text_dim, img_size)

    def forward(self, captions):
        text_features = self.text_encoder(captions)
        return self.image_decoder(text_features)


def train(model, dataloader, num_epochs=10, device="cuda"):
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)  # DEFECT 4
    criterion = nn.MSELoss()  # "contrastive loss"  # DEFECT 6
    for epoch in range(num_epochs):
        for images, captions in dataloader:  # DEFECT 5 (default collate)
            images = images.to(device)
            outputs = model(captions)
            loss = criterion(outputs, images)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"Epoch [{epoch + 1}/{num_epochs}], Loss: {loss.item():.4f}")  # DEFECT 7
