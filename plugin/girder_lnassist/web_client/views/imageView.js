// Adds the LN panel to HistomicsUI's image view, at the top of the right panel group. Its id
// (h-lnassist-panel) lets histomicsui.panel_layout or a folder's panelLayout move or hide it.
import ImageView from '@girder/histomicsui/views/body/ImageView';
import {wrap} from '@girder/core/utilities/PluginUtils';

import LnPanel from './LnPanel';

wrap(ImageView, 'initialize', function (initialize, ...args) {
    const result = initialize.apply(this, args);
    this.lnassistPanel = new LnPanel({parentView: this, imageView: this});
    return result;
});

wrap(ImageView, 'render', function (render, ...args) {
    const result = render.apply(this, args);
    if (!this.lnassistPanel || !this.model.id) {
        return result;
    }
    if (!this.$('#h-lnassist-panel').length) {
        this.$('#h-annotation-selector-container').prepend('<div id="h-lnassist-panel" class="h-lnassist-widget s-panel"></div>');
        this.lnassistPanel.setElement(this.$('#h-lnassist-panel'));
        this.lnassistPanel.setViewer(null).setItem(this.model);
        this.viewerWidget.once('g:imageRendered', () => this.lnassistPanel.setViewer(this.viewerWidget));
        this._orderPanels();
    }
    return result;
});
