"""Gradual Extrapolation on the maps other libraries make, one line each.

    from gradex.integrations import captum, grad_cam, torchcam

    ge = grad_cam.with_ge(GradCAM(model, target_layers=[model.layer4]))   # any BaseCAM
    out = ge(x)                           # out.saliency: GE map; out.peer: the peer's own result
    out = captum.with_ge(LayerGradCam(model, model.layer4))(x, target=3)
    out = torchcam.with_ge(torchcam.methods.GradCAM(model, "layer4"))(x)

Each adapter records the GE stages in the forward pass the peer itself runs (hooks only for the
duration of the call), then calls ``gradex.extrapolate`` on the peer's map. The peers are
optional: each module imports its peer only when an adapter is made (pip install 'gradex[peers]').
"""
