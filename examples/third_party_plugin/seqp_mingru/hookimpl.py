from hf_seqplugins import Architecture, hookimpl

from .configuration import MinGRUConfig
from .modeling import MinGRUForCausalLM, MinGRUForSequenceClassification, MinGRUModel


@hookimpl
def seqplugins_architectures():
    return [
        Architecture(
            "seqp_mingru",
            MinGRUConfig,
            {
                "AutoModel": MinGRUModel,
                "AutoModelForCausalLM": MinGRUForCausalLM,
                "AutoModelForSequenceClassification": MinGRUForSequenceClassification,
            },
            api_version=1,
            tiny_config={"vocab_size": 32, "hidden_size": 16, "num_hidden_layers": 2, "intermediate_size": 32},
            description="minGRU: a GRU whose gates read only the input, trained with a parallel scan",
        )
    ]
