"""Detectron's models in PyTorch: bodies, heads, proposals and ``Generalized_RCNN``.

    model_builder          Generalized_RCNN (Faster / Mask / Keypoint R-CNN, C4 and FPN, RPN-only,
                           Fast R-CNN, RetinaNet), assembled from cfg through the name registry
    registry               config function names -> builders, with Detectron's spellings
    ResNet, FPN            bodies (ResNet / ResNeXt, GroupNorm variants) and the res5 RoI head
    rpn_heads              single-scale and FPN RPN heads; their proposals
    generate_anchors       Detectron's quantized anchors
    generate_proposals     batched proposal generation and the FPN collect step, on the device
    roi_xform              RoIAlign / RoIPoolF / RoICrop feature transforms, FPN level routing
    fast_rcnn_heads, mask_rcnn_heads, keypoint_rcnn_heads
                           the RoI heads and their outputs
    postprocess            batched box decoding, class-wise NMS and the per-image limit
    retinanet_heads        RetinaNet's shared class / box towers and its losses (RETINANET_ON)
    focal_loss             sigmoid / softmax focal loss and select smooth L1 (Detectron's ops)
    retinanet_postprocess  RetinaNet's per-level top-k, decoding, class-wise NMS on the device
    weight_mapping         parameter names -> Detectron blob names (detectron_weight_mapping)

The training targets and losses (issue 6) live here too. Nothing here imports ``datasets`` or
``roi_data``.
"""
