// The LN panel of HistomicsUI's image view: the slide's and its study's LN counts, the model, the
// review state, "Run LN analysis" with its job's progress, the LN list (click: pan and zoom to the
// LN), one-click or Shift+P / Shift+N relabelling, "Mark reviewed", and the heatmap's switch,
// opacity and legend. Everything it shows comes from GET /lnassist/item/{id}/summary?viewer=true
// (access and legend included) and relabels go through the server, so the client repeats none of
// lnassist's names or colours.
import _ from 'underscore';
import $ from 'jquery';

import Panel from '@girder/slicer_cli_web/views/Panel';
import {restRequest} from '@girder/core/rest';
import {getCurrentUser} from '@girder/core/auth';
import eventStream from '@girder/core/utilities/EventStream';
import JobStatus from '@girder/jobs/JobStatus';

import webRoot from './webRoot';
import lnPanelTemplate from '../templates/lnPanel.pug';
import '../stylesheets/lnassist.styl';

const HOTKEYS = {P: 'positive', N: 'negative'}; // with Shift: HistomicsUI's own keys are lower case

function errorText(xhr) {
    return (xhr && xhr.responseJSON && xhr.responseJSON.message) || (xhr && xhr.statusText) || 'no answer';
}

// large_image's viewer (1.35.6) sets image-overlay layers back to the element's opacity whenever it
// restyles an annotation: while drawing one (its geojson is read after the overlay layer may already
// exist), on highlight and hide, and on a global opacity change. Each of those is made to announce
// itself, so the panel's slider is applied again after it, whatever the order.
const OVERLAY_OPACITY_RESETS = ['_mutateFeaturePropertiesForHighlight', 'setGlobalAnnotationOpacity'];

function announceOverlayOpacityResets(viewerWidget) {
    OVERLAY_OPACITY_RESETS.forEach((name) => {
        const original = viewerWidget[name];
        if (typeof original !== 'function' || original.lnassistAnnounces) {
            return;
        }
        const announcing = function (...args) {
            const result = original.apply(this, args);
            this.trigger('h:lnassist:overlayOpacityReset');
            return result;
        };
        announcing.lnassistAnnounces = true;
        viewerWidget[name] = announcing;
    });
}

function logLines(text) {
    return text.split('\n').map((l) => l.trim()).filter((l) => l);
}

function isCliError(line) {
    return /^[A-Za-z]+: error: /.test(line);
}

const LnPanel = Panel.extend({
    events: _.extend({}, Panel.prototype.events, {
        'click .h-lnassist-run': '_run',
        'click .h-lnassist-ln': '_clickRow',
        'click .h-lnassist-label': '_clickLabel',
        'click .h-lnassist-review': '_review',
        'change .h-lnassist-heatmap-toggle': '_toggleHeatmap',
        'input .h-lnassist-heatmap-opacity': '_setHeatmapOpacity'
    }),

    initialize(settings) {
        this.imageView = settings.imageView;
        this.item = null;
        this.summary = null;
        this.study = null;
        this.error = null;
        this.message = null;
        this.job = null;
        this.selected = null;
        this.heatmapOpacity = 1;
        this._refreshSoon = _.debounce(() => this.refresh(), 400);
        this.listenTo(eventStream, 'g:event.job_status', this._onJobStatus);
        this.listenTo(eventStream, 'g:event.job_log', this._onJobLog);
        this.listenTo(eventStream, 'g:event.large_image_annotation.create', this._onAnnotationEvent);
        this.listenTo(eventStream, 'g:event.large_image_annotation.remove', this._onAnnotationEvent);
        // Edits, relabels and deletions in the viewer: HistomicsUI saves the document, then 'sync'.
        this.listenTo(this.imageView.annotations, 'sync remove reset', this._refreshSoon);
        $(document).on('keydown.lnassist', (evt) => this._onKey(evt));
    },

    destroy() {
        $(document).off('keydown.lnassist');
        return Panel.prototype.destroy.apply(this, arguments);
    },

    setItem(item) {
        if (!this.item || !item || this.item.id !== item.id) {
            this.summary = this.study = this.error = this.message = this.job = this.selected = null;
        }
        this.item = item;
        this.refresh();
        return this;
    },

    /** Viewer ready: heatmap layers get the panel's opacity as they are drawn. */
    setViewer(viewerWidget) {
        if (this.viewerWidget) {
            this.stopListening(this.viewerWidget);
        }
        this.viewerWidget = viewerWidget;
        if (viewerWidget) {
            announceOverlayOpacityResets(viewerWidget);
            this.listenTo(viewerWidget, 'g:drawOverlayAnnotation h:lnassist:overlayOpacityReset',
                () => this._applyHeatmapOpacity());
            this.listenTo(viewerWidget, 'g:mouseClickAnnotation', this._clickOutline);
        }
        return this;
    },

    refresh() {
        if (!this.item || !getCurrentUser()) {
            this.render();
            return $.when();
        }
        const itemId = this.item.id;
        const slide = restRequest({url: `lnassist/item/${itemId}/summary`, data: {viewer: true}, error: null});
        const study = restRequest({
            url: `lnassist/folder/${this.item.get('folderId')}/summary`, data: {limit: 1}, error: null
        });
        return $.when(slide, study).done((slideAnswer, studyAnswer) => {
            if (!this.item || this.item.id !== itemId) {
                return;
            }
            this.summary = slideAnswer[0];
            this.study = studyAnswer[0];
            this.error = null;
            if (this.selected && !_.findWhere(this.summary.lns, {element_id: this.selected})) {
                this.selected = null;
            }
            this.render();
        }).fail((xhr) => {
            this.error = `The LN analysis could not be read: ${errorText(xhr)}`;
            this.render();
        });
    },

    render() {
        const collapsed = this.$('.s-panel-content.collapse').length && !this.$('.s-panel-content').hasClass('in');
        const summary = this.summary;
        const viewer = summary ? summary.viewer : null;
        const heatmap = viewer && viewer.heatmap_annotation_id ? this._annotation(viewer.heatmap_annotation_id) : null;
        this.$el.html(lnPanelTemplate({
            collapsed,
            user: getCurrentUser(),
            summary,
            viewer,
            study: this.study,
            error: this.error,
            message: this.message,
            job: this.job,
            jobText: this.job ? JobStatus.text(this.job.status) : '',
            jobUrl: this.job ? `${webRoot()}/#job/${this.job.id}` : '',
            selected: this.selected,
            heatmapShown: heatmap ? !!heatmap.get('displayed') : false,
            heatmapOpacity: this.heatmapOpacity,
            gradient: viewer ? `linear-gradient(to right, ${viewer.legend.stops.map((s) => `${s.rgba} ${s.score * 100}%`).join(', ')})` : ''
        }));
        this.$('.s-panel-content').collapse({toggle: false});
        return this;
    },

    _annotation(id) {
        return this.imageView.annotations.get(id) || null;
    },

    _run() {
        this.message = null;
        this.$('.h-lnassist-run').prop('disabled', true);
        restRequest({method: 'POST', url: `lnassist/item/${this.item.id}/analyze`, error: null}).done((job) => {
            this.job = {id: job._id, status: job.status, log: ''};
            this.render();
        }).fail((xhr) => {
            this.message = `LN analysis could not start: ${errorText(xhr)}`;
            this.render();
        });
    },

    _onJobStatus(evt) {
        const job = evt.data;
        if (!this.job || !job || job._id !== this.job.id) {
            return;
        }
        this.job.status = job.status;
        if (job.status === JobStatus.SUCCESS) {
            // The documents are ingested after the job ends: their create events refresh again.
            this._refreshSoon();
        } else if (job.status === JobStatus.ERROR || job.status === JobStatus.CANCELED) {
            restRequest({url: `job/${job._id}`, error: null}).done((full) => {
                const lines = logLines((full.log || []).join(''));
                if (!this.job.cliError) {
                    this._showLog(lines);
                }
                this.render();
            });
        }
        this.render();
    },

    _onJobLog(evt) {
        if (!this.job || !evt.data || evt.data._id !== this.job.id || !evt.data.text) {
            return;
        }
        // Log lines can arrive after the job's end: the CLI's own message, once seen, stays, and the
        // worker's traceback after an end does not replace what the panel says.
        const ended = [JobStatus.ERROR, JobStatus.CANCELED, JobStatus.SUCCESS].includes(this.job.status);
        const lines = logLines(evt.data.text);
        if (lines.length && !this.job.cliError && (!ended || lines.some(isCliError))) {
            this._showLog(lines);
            if (ended) {
                this.render(); // the failure message quotes the log
            } else {
                this.$('.h-lnassist-job-log').text(this.job.log);
            }
        }
    },

    // The CLI's own one-line message ("LNAnalysis: error: ...") when there is one, else the last line.
    _showLog(lines) {
        const cliError = _.last(lines.filter(isCliError));
        this.job.cliError = Boolean(cliError);
        this.job.log = cliError || _.last(lines) || this.job.log || '';
    },

    _onAnnotationEvent(evt) {
        if (this.item && evt.data && evt.data.itemId === this.item.id) {
            this._refreshSoon();
        }
    },

    _clickRow(evt) {
        this._select(String($(evt.currentTarget).data('element-id')), true);
    },

    _clickOutline(element, annotationId) {
        if (this.summary && this.summary.annotation && annotationId === this.summary.annotation.id && element) {
            this._select(element.id, false);
        }
    },

    _select(elementId, zoom) {
        this.selected = elementId;
        this.render();
        const annotation = this.summary && this.summary.annotation ? this._annotation(this.summary.annotation.id) : null;
        const element = annotation ? annotation.elements().get(elementId) : null;
        const map = this.viewerWidget && this.viewerWidget.viewer;
        if (!zoom || !element || !map || !element.get('points')) {
            return;
        }
        const points = element.get('points');
        const xs = points.map((p) => p[0]);
        const ys = points.map((p) => p[1]);
        const pad = 0.15 * Math.max(_.max(xs) - _.min(xs), _.max(ys) - _.min(ys));
        map.bounds({left: _.min(xs) - pad, top: _.min(ys) - pad, right: _.max(xs) + pad, bottom: _.max(ys) + pad});
    },

    _clickLabel(evt) {
        this._relabel($(evt.currentTarget).data('label'));
    },

    _relabel(label) {
        const summary = this.summary;
        if (!summary || !summary.viewer.access.write || !this.selected || !summary.annotation) {
            return;
        }
        const row = _.findWhere(summary.lns, {element_id: this.selected});
        if (!row || row.label === label) {
            return;
        }
        this.message = null;
        // The server relabels (one new version; history keeps the AI's original), then HistomicsUI
        // reloads the documents, as after a revert: relabelling its in-memory copy instead loses the
        // change whenever HistomicsUI is reloading that copy at the time.
        restRequest({
            method: 'PUT',
            url: `lnassist/annotation/${summary.annotation.id}/ln/${this.selected}/label`,
            data: {label},
            error: null
        }).done((answer) => {
            this.summary = _.extend(answer, {viewer: summary.viewer});
            this.render();
            this.imageView.annotations.trigger('h:revert:annotation');
        }).fail((xhr) => {
            this.message = `Relabel not saved: ${errorText(xhr)}`;
            this.render();
        });
    },

    _onKey(evt) {
        if (!HOTKEYS[evt.key] || !evt.shiftKey || evt.ctrlKey || evt.altKey || evt.metaKey) {
            return;
        }
        if (/^(input|textarea|select)$/.test((document.activeElement.tagName || '').toLowerCase())) {
            return;
        }
        if (this.selected && this.$el.is(':visible')) {
            evt.preventDefault();
            this._relabel(HOTKEYS[evt.key]);
        }
    },

    _review(evt) {
        const state = $(evt.currentTarget).data('state');
        this.message = null;
        restRequest({
            method: 'PUT',
            url: `lnassist/annotation/${this.summary.annotation.id}/review`,
            data: {state},
            error: null
        }).done(() => this.refresh()).fail((xhr) => {
            this.message = `Review not recorded: ${errorText(xhr)}`;
            this.render();
        });
    },

    _toggleHeatmap(evt) {
        const heatmap = this._annotation(this.summary.viewer.heatmap_annotation_id);
        if (heatmap) {
            heatmap.set('displayed', $(evt.currentTarget).is(':checked'));
        }
    },

    _setHeatmapOpacity(evt) {
        this.heatmapOpacity = parseFloat($(evt.currentTarget).val());
        this._applyHeatmapOpacity();
    },

    /** The heatmap image's layers at the element's own opacity times the panel's slider. */
    _applyHeatmapOpacity() {
        const viewer = this.summary && this.summary.viewer;
        const heatmap = viewer && viewer.heatmap_annotation_id ? this._annotation(viewer.heatmap_annotation_id) : null;
        const map = this.viewerWidget && this.viewerWidget.viewer;
        if (!heatmap || !map) {
            return;
        }
        heatmap.elements().each((element) => {
            if (element.get('type') !== 'image') {
                return;
            }
            map.layers().filter((layer) => layer.id() === element.id).forEach((layer) => {
                layer.opacity((element.get('opacity') || 1) * this.heatmapOpacity);
            });
        });
        map.scheduleAnimationFrame(map.draw, true);
    }
});

export default LnPanel;
