"""Depth and alias limits as one validation rule that walks each fragment once.

strawberry's ``QueryDepthLimiter`` and ``MaxAliasesLimiter`` expand every fragment spread where it occurs,
so a 1 KB document whose fragments each spread the next one twice makes them walk 2^n selections. Here each
fragment's depth and alias count is measured once and reused at every spread, so the walk is linear in the
size of the document, whatever it would expand to. The figures and messages are the same as strawberry's:

* depth: a field with a selection counts one level, a leaf none, fragments none of their own; fields whose
  name starts with ``__`` (introspection) are not counted. An operation deeper than the limit gets
  ``'<name>' exceeds maximum operation depth of <limit>`` (``anonymous`` when it has no name);
* aliases: every aliased field an operation reaches, a fragment's counted each time it is spread; more
  than the limit in the whole document gets ``<n> aliases found. Allowed: <limit>``.

The rule classes are made once (:func:`limits_rule`), so the validation rules of every request are the
same tuple and a validation cache can recognise a document it has validated before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)


@dataclass
class Measure:
    """Depth of each operation (by name) and aliases of the whole document; ``visited`` is how many
    selections the walk looked at (each selection in the document at most once)."""

    depths: dict[str, int] = field(default_factory=dict)
    aliases: int = 0
    visited: int = 0


class _Walk:
    def __init__(self, document: DocumentNode) -> None:
        self.fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self.measured: dict[str, tuple[int, int]] = {}
        self.open: set[str] = (
            set()
        )  # fragments being measured: a cycle counts nothing (validation refuses it)
        self.visited = 0

    def selection_set(self, selection_set: SelectionSetNode) -> tuple[int, int]:
        """(depth, aliases) of a selection set."""
        depth = aliases = 0
        for node in selection_set.selections:
            self.visited += 1
            if isinstance(node, FieldNode):
                if node.alias is not None:
                    aliases += 1
                if node.selection_set is not None:
                    inner_depth, inner_aliases = self.selection_set(node.selection_set)
                    aliases += inner_aliases
                    if not node.name.value.startswith("__"):
                        depth = max(depth, 1 + inner_depth)
            elif isinstance(node, InlineFragmentNode):
                inner_depth, inner_aliases = self.selection_set(node.selection_set)
                depth, aliases = max(depth, inner_depth), aliases + inner_aliases
            elif isinstance(node, FragmentSpreadNode):
                inner_depth, inner_aliases = self.fragment(node.name.value)
                depth, aliases = max(depth, inner_depth), aliases + inner_aliases
        return depth, aliases

    def fragment(self, name: str) -> tuple[int, int]:
        if name in self.measured:
            return self.measured[name]
        definition = self.fragments.get(name)
        if definition is None or name in self.open:
            return 0, 0
        self.open.add(name)
        self.measured[name] = self.selection_set(definition.selection_set)
        self.open.discard(name)
        return self.measured[name]


def measure(document: DocumentNode) -> Measure:
    """Depth per operation and the alias count of ``document``, in one walk linear in its size."""
    walk = _Walk(document)
    result = Measure()
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            depth, aliases = walk.selection_set(definition.selection_set)
            name = definition.name.value if definition.name else "anonymous"
            result.depths[name] = depth
            result.aliases += aliases
    result.visited = walk.visited
    return result


@cache
def limits_rule(max_depth: int, max_aliases: int) -> type[ValidationRule]:
    """The validation rule enforcing both limits; one class per pair of limits, made once."""

    class QueryLimits(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            document = context.document
            found = measure(document)
            for definition in document.definitions:
                if isinstance(definition, OperationDefinitionNode):
                    name = definition.name.value if definition.name else "anonymous"
                    if found.depths.get(name, 0) > max_depth:
                        context.report_error(
                            GraphQLError(
                                f"'{name}' exceeds maximum operation depth of {max_depth}", [definition]
                            )
                        )
            if found.aliases > max_aliases:
                context.report_error(GraphQLError(f"{found.aliases} aliases found. Allowed: {max_aliases}"))

    return QueryLimits
