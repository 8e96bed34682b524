"""What keeps older files and older names of the STT block working.

Files saved before the block had sublayers hold its 16 weights as the block's own
variables; `OlderLayouts.load_own_variables` assigns them to the sublayers. Code
written against those variables reads them under their old names (`query_kernel`,
`norm1_gamma`, ...: `OlderLayouts` has one alias per weight).
"""

# The block's sublayers in the order of the old layout (its variables, two each), and their weights' names.
SUBLAYERS = ("query", "key", "value", "output", "norm1", "ffn1", "ffn2", "norm2")
_DENSE, _NORM = ("kernel", "bias"), ("gamma", "beta")
WEIGHT_NAMES = tuple(f"{layer}_{weight}" for layer in SUBLAYERS
                     for weight in (_NORM if layer.startswith("norm") else _DENSE))


def _skip_next_load(layer):
    """Makes the next `layer.load_own_variables` a no-op when the file has nothing for it (its parent
    loaded its weights from the old layout); anything the file does hold is still loaded."""
    def load_own_variables(store):
        object.__delattr__(layer, "load_own_variables")  # back to the class's method
        if len(store.keys()):
            layer.load_own_variables(store)

    object.__setattr__(layer, "load_own_variables", load_own_variables)


def _alias(name):
    sublayer, weight = name.rsplit("_", 1)
    index = (_NORM if sublayer.startswith("norm") else _DENSE).index(weight)
    return property(lambda self: self.weights_of(sublayer)[index],
                    doc=f"The {sublayer} sublayer's {weight}.")


class OlderLayouts:
    """Mixin of `SparseTemporalTransformer`: the old weight names and the loading of the old layout.

    Needs of the layer: `weights_of(sublayer)` and `_weight_layers()` (the sublayers in SUBLAYERS order).
    """

    def load_own_variables(self, store):
        """Loads files saved before the block had sublayers: its 16 weights were its own variables.

        Such a file lists them (in `_weight_layers` order) under the block itself and
        nothing under the sublayers: they are assigned here and the sublayers' own
        (empty) load is skipped once. A current file has nothing under the block.
        """
        count = len(store.keys())
        if count == 0:
            return
        variables = [v for layer in self._weight_layers() for v in layer.weights]
        if not self.built or count != len(variables):
            raise ValueError(f"Layer '{self.name}': the file lists {count} variables for the block itself; a file "
                             f"from before its sublayers lists {len(variables)} (and a current one none).")
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])
        for layer in self._weight_layers():
            _skip_next_load(layer)


for _name in WEIGHT_NAMES:
    setattr(OlderLayouts, _name, _alias(_name))
del _name
