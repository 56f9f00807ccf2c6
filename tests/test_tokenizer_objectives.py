"""Semantic supervision of the image tokenizer: per-cell labels from the scene, a head that can learn them."""

import torch

from unifork.tokenizers.image import images_to_tensor
from unifork.tokenizers.objectives import ATTRIBUTES, SemanticHead, cell_labels
from unifork.world.render import render
from unifork.world.spec import COLORS, SHAPES, SIZES, Scene, SceneObject

SCENE = Scene((SceneObject("circle", "red", "large", cx=20, cy=12), SceneObject("cross", "blue", "small", cx=50, cy=45)))


def test_cell_labels_name_the_covering_object_and_its_centre():
    labels = cell_labels([SCENE], grid=8)[0].reshape(8, 8, len(ATTRIBUTES))
    color, shape, size, centre = labels.unbind(-1)
    # the large red circle spans x 11..29, y 3..21: cells (row 0..2, col 1..3); its centre (20, 12) is in cell (1, 2)
    assert color[1, 2] == list(COLORS).index("red") + 1 and shape[1, 2] == SHAPES.index("circle") + 1
    assert size[1, 2] == SIZES.index("large") + 1
    assert color[5, 6] == list(COLORS).index("blue") + 1 and shape[5, 6] == SHAPES.index("cross") + 1
    assert centre.sum() == 2 and centre[1, 2] == 1 and centre[5, 6] == 1
    assert (labels[7, 0] == 0).all() and (labels[0, 7] == 0).all()  # background cells: "no object"
    covered = (color > 0).sum().item()
    image_cells = images_to_tensor(render(SCENE)[None]).reshape(3, 8, 8, 8, 8).amin(dim=(0, 2, 4))
    assert covered == (image_cells < 1).sum().item()  # a cell is labelled iff some pixel of it is not white


def test_semantic_head_learns_labels_that_are_in_the_latents():
    labels = cell_labels([SCENE], grid=8).repeat(4, 1, 1)
    latents = torch.nn.functional.one_hot(labels[..., 0], 16).float() + torch.nn.functional.one_hot(labels[..., 1] + 8, 16).float()
    latents = torch.cat([latents, labels[..., 2:].float()], -1)
    head = SemanticHead(latents.shape[-1])
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    first = head.loss(latents, labels).item()
    for _ in range(100):
        optimizer.zero_grad()
        loss = head.loss(latents, labels)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * first
