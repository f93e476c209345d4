// Applies FLATRENDER_INJECTION (defined on the line above by flatrender-agent) to the open
// project. ExtendScript (ECMAScript 3): no JSON object, no Array.prototype.forEach.
// A failed edit throws "scene_data.edits[i]: <what>", which the patched commandLineRenderer.jsx
// reports as "aerender ERROR: Error executing script:" followed by the message.
var FLATRENDER_DATA = FLATRENDER_INJECTION.custom_data;
(function (injection) {
    function fail(edit, what) {
        throw new Error("scene_data.edits[" + edit.index + "]: " + what);
    }
    function warn(edit, what) {
        $.writeln("WARNING:FlatRender: scene_data.edits[" + edit.index + "]: " + what + " (skipped)");
    }
    function compositions(edit) {
        var found = [];
        for (var i = 1; i <= app.project.numItems; i++) {
            var item = app.project.item(i);
            if (item instanceof CompItem && (edit.composition === null || item.name === edit.composition)) {
                found.push(item);
            }
        }
        return found;
    }
    function layers(edit) {
        var comps = compositions(edit);
        var found = [];
        for (var c = 0; c < comps.length; c++) {
            var comp = comps[c];
            if (edit.layer.index !== undefined) {
                if (edit.layer.index >= 1 && edit.layer.index <= comp.numLayers) {
                    found.push(comp.layer(edit.layer.index));
                }
                continue;
            }
            for (var l = 1; l <= comp.numLayers; l++) {
                if (comp.layer(l).name === edit.layer.name) {
                    found.push(comp.layer(l));
                }
            }
        }
        return found;
    }
    function color(c) {
        return [c.red, c.green, c.blue];
    }
    function property(edit, layer, path) {
        var prop = layer;
        for (var i = 0; i < path.length; i++) {
            prop = prop.property(path[i]);
            if (prop === null || prop === undefined) {
                return null;
            }
        }
        return prop;
    }
    function setText(layer, change) {
        var source = layer.property("ADBE Text Properties").property("ADBE Text Document");
        var doc = source.value;
        doc.text = change.text.replace(/\n/g, "\r");
        if (change.font !== null) { doc.font = change.font; }
        if (change.font_size !== null) { doc.fontSize = change.font_size; }
        if (change.fill_color !== null) { doc.applyFill = true; doc.fillColor = color(change.fill_color); }
        if (change.tracking !== null) { doc.tracking = change.tracking; }
        if (change.justification === "left") { doc.justification = ParagraphJustification.LEFT_JUSTIFY; }
        if (change.justification === "center") { doc.justification = ParagraphJustification.CENTER_JUSTIFY; }
        if (change.justification === "right") { doc.justification = ParagraphJustification.RIGHT_JUSTIFY; }
        source.setValue(doc);
    }
    function replaceMedia(layer, media) {
        var footage = app.project.importFile(new ImportOptions(new File(media.path)));
        var width = layer.source.width, height = layer.source.height;
        layer.replaceSource(footage, false);
        var sx = 100 * width / footage.width, sy = 100 * height / footage.height;
        var scale = media.fit === "contain" ? Math.min(sx, sy)
            : media.fit === "stretch" ? null
            : media.fit === "none" ? 100 : Math.max(sx, sy);
        var transform = layer.property("ADBE Transform Group").property("ADBE Scale");
        transform.setValue(scale === null ? [sx, sy] : [scale, scale]);
    }
    function value(v) {
        if (v.number !== undefined) { return v.number; }
        if (v.boolean !== undefined) { return v.boolean ? 1 : 0; }
        if (v.vector !== undefined) { return v.vector; }
        if (v.color !== undefined) { return color(v.color); }
        if (v.text !== undefined) { return v.text; }
        return v.menu_index;
    }
    for (var e = 0; e < injection.edits.length; e++) {
        var edit = injection.edits[e];
        var found = layers(edit);
        if (found.length === 0) {
            if (edit.ignore_missing) { warn(edit, "no such layer"); continue; }
            fail(edit, "layer not found");
        }
        for (var f = 0; f < found.length; f++) {
            var layer = found[f], change = edit.change;
            try {
                if (change.text !== undefined) { setText(layer, change.text); }
                else if (change.media !== undefined) { replaceMedia(layer, change.media); }
                else if (change.solid_color !== undefined) { layer.source.mainSource.color = color(change.solid_color); }
                else if (change.enabled !== undefined) { layer.enabled = change.enabled; }
                else if (change.property !== undefined) {
                    var prop = property(edit, layer, change.property.path);
                    if (prop === null) {
                        if (edit.ignore_missing) { warn(edit, "no such property"); continue; }
                        fail(edit, "property not found: " + change.property.path.join(" > "));
                    }
                    prop.setValue(value(change.property.value));
                }
            } catch (err) {
                if (String(err.message).indexOf("scene_data.edits[") === 0) { throw err; }
                fail(edit, "value rejected: " + err.message);
            }
        }
    }
})(FLATRENDER_INJECTION);
