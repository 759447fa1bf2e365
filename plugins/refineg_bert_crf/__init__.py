"""Built-in ``bert_crf`` tagger: a transformers encoder, word shapes, emissions and a CRF."""
